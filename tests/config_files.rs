//! The policies shipped in `config/` compile.

#[test]
fn example_policies_compile() {
    let env = |name: &str| (name == "QB_API_KEY").then(|| "k".to_string());
    for file in ["config/policy.example.yaml", "config/policy.minimal.yaml"] {
        let text = std::fs::read_to_string(file).unwrap();
        if let Err(e) = qbgate::policy::compile_with_env(&text, &env) {
            panic!("{file}:\n{e}");
        }
    }
}

#[test]
fn the_demo_keys_match_the_example_policy() {
    let env = |_: &str| Some("k".to_string());
    let policy = qbgate::policy::compile_with_env(qbgate::cli::EXAMPLE_POLICY, &env).unwrap();
    for (id, key) in qbgate::cli::DEMO_KEYS {
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(key.as_bytes()).into()
        };
        assert_eq!(
            policy.key_by_digest(&digest).map(|(_, k)| k.id.as_ref()),
            Some(id)
        );
    }
}

fn yaml(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn the_committed_schema_is_what_qbgate_schema_prints() {
    let committed = std::fs::read_to_string("config/policy.schema.json").unwrap();
    assert!(
        committed == qbgate::policy::schema(),
        "config/policy.schema.json is stale: run `cargo run -- schema > config/policy.schema.json`"
    );
}

#[test]
fn example_policies_validate_against_the_schema_and_the_modeline_points_at_it() {
    let schema: serde_json::Value = serde_json::from_str(&qbgate::policy::schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for file in [
        "config/policy.example.yaml",
        "config/policy.minimal.yaml",
        "deploy/kubernetes/policy.yaml",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&yaml(&text))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
        if file.starts_with("config/") {
            assert!(
                text.starts_with("# yaml-language-server: $schema=./policy.schema.json"),
                "{file}"
            );
        }
    }
    // The schema can fail: an unknown field, a bad enum value and a zero rate are refused.
    let bad = yaml("version: 1\nqb_token: maybe\nbogus: 1\nkeys:\n  - id: a\n    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n    rate_limit: { per_second: 0 }\n");
    assert_eq!(
        validator.iter_errors(&bad).count(),
        3,
        "{:?}",
        validator
            .iter_errors(&bad)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
}

/// `qbgate check` validates a policy where its secrets are not (a CI job checking a ConfigMap):
/// it reads no `{env: ..}` or `{file: ..}` unless `--resolve-secrets` asks it to.
#[test]
fn check_reads_no_secret_unless_asked() {
    let dir = std::env::temp_dir().join(format!("qbgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nupstream:\n  api_key: {{ env: QBGATE_TEST_UNSET_KEY }}\nkeys:\n  - id: a\n    sha256: {}\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let check = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
            .args(["check", "--policy"])
            .arg(&path)
            .args(extra)
            .env_remove("QBGATE_TEST_UNSET_KEY")
            .env_remove("QB_API_KEY")
            .output()
            .unwrap()
    };
    let offline = check(&[]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let resolved = check(&["--resolve-secrets"]);
    assert_eq!(resolved.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&resolved.stderr);
    assert!(
        stderr.contains(
            "upstream.api_key: environment variable QBGATE_TEST_UNSET_KEY is not set (line 3, column 12)"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `qbgate gen-key --rotate ID --policy FILE` reads the key's entry offline (its secrets unset) and
/// prints a new key and the `digests:` that, pasted in place of `sha256:`, compile: the old digest
/// with its `not_after`, the new digest without one.
#[test]
fn gen_key_rotate_prints_digests_that_compile_when_pasted() {
    let dir = std::env::temp_dir().join(format!("qbgate-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.yaml");
    let old = "cd".repeat(32);
    let text = format!(
        "version: 1\nupstream:\n  api_key: {{ env: QBGATE_TEST_UNSET_KEY }}\nkeys:\n  - id: other\n    sha256: {}\n  - id: svc\n    sha256: {old}\n    on_behalf_of: any\n",
        "ab".repeat(32)
    );
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
        .args([
            "gen-key",
            "--rotate",
            "svc",
            "--not-after",
            "2026-12-31T00:00:00Z",
            "--policy",
        ])
        .arg(&path)
        .env_remove("QBGATE_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:    "))
        .unwrap();
    let fragment: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("    digests:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        fragment.contains("not_after: 2026-12-31T00:00:00Z"),
        "{stdout}"
    );
    let pasted = text.replace(&format!("    sha256: {old}\n"), &fragment);
    let policy = qbgate::policy::compile_with_env(&pasted, &|_| Some("upstream".into()))
        .unwrap_or_else(|e| panic!("{e}\n{pasted}"));
    let mut old_digest = [0u8; 32];
    hex::decode_to_slice(&old, &mut old_digest).unwrap();
    let mut new_digest = [0u8; 32];
    hex::decode_to_slice(qbgate::policy::digest_hex(key.as_bytes()), &mut new_digest).unwrap();
    let (_, k, d) = policy.key_and_digest(&old_digest).unwrap();
    assert_eq!(k.id.as_ref(), "svc");
    assert_eq!(
        d.not_after,
        Some(humantime::parse_rfc3339("2026-12-31T00:00:00Z").unwrap())
    );
    let (_, k, d) = policy.key_and_digest(&new_digest).unwrap();
    assert_eq!((k.id.as_ref(), d.not_after), ("svc", None));
    // Without --rotate the output is the two lines it always was.
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
        .arg("gen-key")
        .output()
        .unwrap();
    let plain = String::from_utf8(plain.stdout).unwrap();
    let lines: Vec<&str> = plain.lines().collect();
    assert!(
        lines.len() == 2
            && lines[0].starts_with("key:    qbg_")
            && lines[1].starts_with("sha256: "),
        "{plain}"
    );
}
