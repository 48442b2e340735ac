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
