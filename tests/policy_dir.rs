//! `--policy DIR`: every `*.yaml` of a directory is part of one policy, `keys` spread across
//! files, other sections in one file each; errors name the file; the real binary reloads the set
//! as one unit after a Kubernetes-style `..data` swap and keeps the last good set when one file is
//! broken or half-written.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qbgate::policy::{load_with, Secrets};

use crate::support::digest;

/// A fresh empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "qbgate-pdir-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// YAML key entries (`on_behalf_of: any`) for `ids`, each key's secret being `secret-<id>`.
fn keys(ids: &[&str]) -> String {
    let mut text = String::from("keys:\n");
    for id in ids {
        text.push_str(&format!(
            "  - id: {id}\n    sha256: {}\n    on_behalf_of: any\n",
            digest(&format!("secret-{id}"))
        ));
    }
    text
}

fn errors(dir: &Path) -> String {
    load_with(dir, Secrets::Offline)
        .expect_err("the directory should not compile")
        .to_string()
}

#[test]
fn keys_spread_across_files_make_one_policy_and_other_files_are_skipped() {
    let dir = temp_dir("spread");
    std::fs::write(
        dir.join("10-settings.yaml"),
        "version: 1\nupstream:\n  url: http://127.0.0.1:1\nmax_body_bytes: 4096\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("20-team-a.yaml"),
        format!("version: 1\n{}", keys(&["a1", "a2"])),
    )
    .unwrap();
    std::fs::write(
        dir.join("30-team-b.yaml"),
        format!("version: 1\n{}", keys(&["b1"])),
    )
    .unwrap();
    // Skipped: hidden files, other extensions, directories named like a policy.
    std::fs::write(dir.join(".swap.yaml"), "not: [valid").unwrap();
    std::fs::write(dir.join("README.txt"), "not a policy").unwrap();
    std::fs::write(dir.join("policy.yaml.bak"), "version: 2").unwrap();
    std::fs::create_dir(dir.join("nested.yaml")).unwrap();
    let policy = load_with(&dir, Secrets::Offline).unwrap();
    let ids: Vec<&str> = policy.keys.iter().map(|k| &*k.id).collect();
    assert_eq!(ids, ["a1", "a2", "b1"]);
    assert_eq!(policy.max_body_bytes, 4096);
    assert_eq!(policy.upstream.origin.as_str(), "127.0.0.1:1");
    // The digest covers the whole set: changing one file changes it.
    let before = policy.digest.clone();
    assert_eq!(
        qbgate::policy::source_digest(&dir).as_deref(),
        Some(&*before)
    );
    std::fs::write(
        dir.join("30-team-b.yaml"),
        format!("version: 1\n{}", keys(&["b1", "b2"])),
    )
    .unwrap();
    let policy = load_with(&dir, Secrets::Offline).unwrap();
    assert_eq!(policy.keys.len(), 4);
    assert_ne!(policy.digest, before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_section_in_two_files_is_an_error_naming_both() {
    let dir = temp_dir("section");
    std::fs::write(
        dir.join("a.yaml"),
        format!(
            "version: 1\nupstream:\n  url: http://127.0.0.1:1\n{}",
            keys(&["a"])
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "version: 1\nqb_token: reject\nupstream:\n  url: http://127.0.0.1:2\n",
    )
    .unwrap();
    let text = errors(&dir);
    assert_eq!(
        text,
        "b.yaml: upstream: is also given in a.yaml: a section stands in one file of a policy \
         directory (line 3, column 1)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_key_id_in_two_files_is_an_error_naming_both() {
    let dir = temp_dir("dupid");
    std::fs::write(
        dir.join("a.yaml"),
        format!("version: 1\n{}", keys(&["one", "shared"])),
    )
    .unwrap();
    // The same id with another digest: still one id too many.
    std::fs::write(
        dir.join("b.yaml"),
        format!(
            "version: 1\nkeys:\n  - id: two\n    sha256: {}\n  - id: shared\n    sha256: {}\n",
            digest("x"),
            digest("y")
        ),
    )
    .unwrap();
    let text = errors(&dir);
    assert_eq!(
        text,
        "b.yaml: keys[1].id: duplicate key id `shared`: also in a.yaml (line 6, column 9) \
         (line 5, column 9)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_file_line_and_column() {
    let dir = temp_dir("places");
    std::fs::write(dir.join("a.yaml"), format!("version: 1\n{}", keys(&["a"]))).unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "version: 1\nkeys:\n  - id: b\n    sha256: nothex\n  - id: c\n    sha256: alsonothex\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("c.yaml"),
        "version: 1\ndialog_rules:\n  mode: strict\n",
    )
    .unwrap();
    let text = errors(&dir);
    let lines: Vec<&str> = text.lines().collect();
    let hex = "must be 64 hex characters: the SHA-256 of the key (`qbgate hash-key`)";
    assert_eq!(
        lines,
        [
            "c.yaml: dialog_rules.mode: must be `enforce`, `report` or `off` (line 3, column 9)"
                .to_string(),
            format!("b.yaml: keys[0].sha256: {hex} (line 4, column 13)"),
            format!("b.yaml: keys[1].sha256: {hex} (line 6, column 13)"),
        ],
        "{text}"
    );
    // A file that does not parse, and a file with another version.
    std::fs::write(dir.join("b.yaml"), "version: 1\nkeys:\n  - id: [b\n").unwrap();
    std::fs::write(dir.join("c.yaml"), "version: 2\n").unwrap();
    let text = errors(&dir);
    assert!(text.starts_with("b.yaml: policy: "), "{text}");
    assert!(text.contains("(line "), "{text}");
    std::fs::write(dir.join("b.yaml"), "version: 1\n").unwrap();
    assert_eq!(
        errors(&dir),
        "c.yaml: version: must be 1 (line 1, column 10)"
    );
    // An empty directory.
    let empty = temp_dir("empty");
    assert!(errors(&empty).ends_with(": holds no policy file (*.yaml)"));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn check_reads_a_directory_with_the_same_loader() {
    let dir = temp_dir("check");
    std::fs::write(dir.join("a.yaml"), format!("version: 1\n{}", keys(&["a"]))).unwrap();
    std::fs::write(dir.join("b.yaml"), format!("version: 1\n{}", keys(&["b"]))).unwrap();
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_qbgate"))
            .args(["check", "--policy"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok: 2 keys"), "{stdout}");
    std::fs::write(dir.join("b.yaml"), format!("version: 1\n{}", keys(&["a"]))).unwrap();
    let out = check();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("b.yaml: keys[0].id: duplicate key id `a`: also in a.yaml"),
        "{all}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Kubernetes-style volume: the files are links `NAME -> ..data/NAME`, `..data` a link to a
/// timestamped directory that is replaced whole.
struct Volume {
    dir: PathBuf,
    generation: usize,
}

impl Volume {
    fn new(files: &[(&str, &str)]) -> Volume {
        let mut volume = Volume {
            dir: temp_dir("volume"),
            generation: 0,
        };
        volume.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name)).unwrap();
        }
        volume
    }

    /// As the kubelet does: write the new set into a fresh directory, then atomically rename a
    /// new `..data` link over the old one.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let data = format!("..2026_12_05_{:04}", self.generation);
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        for (name, text) in files {
            std::fs::write(self.dir.join(&data).join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `qbgate run --policy DIR`, ready; killed on drop.
struct Running {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(policy: &Path) -> Running {
        let (listen, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_qbgate"))
            .args(["run", "--policy"])
            .arg(policy)
            .args(["--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .env("QBGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            listen,
            admin,
        };
        let ready = until(Duration::from_secs(10), || {
            assert!(running.child.try_wait().unwrap().is_none(), "qbgate exited");
            get(running.admin, "/readyz", None).0 == 200
        });
        assert!(ready, "not ready in 10 s");
        running
    }

    /// Whether the gateway knows the key of `id` (anything but 401).
    fn knows(&self, id: &str) -> bool {
        get(
            self.listen,
            "/chat/Dialog.json",
            Some(&format!("secret-{id}")),
        )
        .0 != 401
    }

    fn failed_reloads(&self) -> u64 {
        let (_, body) = get(self.admin, "/metrics", None);
        body.lines()
            .find_map(|l| l.strip_prefix("qbgate_policy_reloads_total{result=\"failure\"} "))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

/// Poll `f` every 5 ms until it holds or `limit` passes.
fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// One HTTP/1.1 GET, `(status, body)`; status 0 when the connection failed.
fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let auth = key.map_or(String::new(), |k| {
        format!("Authorization: ApiKey {k}\r\nOn-Behalf-Of: 5\r\n")
    });
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

const SETTINGS: &str = "version: 1\nupstream:\n  url: http://127.0.0.1:1\n";

#[test]
fn a_data_swap_reloads_the_set_as_one_unit_and_a_broken_set_keeps_the_last_good_one() {
    let a = format!("version: 1\n{}", keys(&["alpha", "moving"]));
    let b = format!("version: 1\n{}", keys(&["beta"]));
    let mut volume = Volume::new(&[("settings.yaml", SETTINGS), ("a.yaml", &a), ("b.yaml", &b)]);
    let gate = Running::start(&volume.dir);
    assert!(gate.knows("alpha") && gate.knows("moving") && gate.knows("beta"));
    assert!(!gate.knows("gamma"));

    // `moving` goes from a.yaml to b.yaml and `gamma` comes in: read file by file, the set would
    // hold `moving` twice (refused) or not at all.
    let a2 = format!("version: 1\n{}", keys(&["alpha", "gamma"]));
    let b2 = format!("version: 1\n{}", keys(&["beta", "moving"]));
    volume.swap(&[
        ("settings.yaml", SETTINGS),
        ("a.yaml", &a2),
        ("b.yaml", &b2),
    ]);
    assert!(
        until(Duration::from_secs(5), || gate.knows("gamma")),
        "the swapped set was not loaded"
    );
    assert!(gate.knows("moving") && gate.knows("alpha") && gate.knows("beta"));
    assert_eq!(gate.failed_reloads(), 0);

    // A set with a file cut off mid-key: refused whole, counted, the last good set serves on.
    let cut = &b2[..b2.len() - 30];
    let a3 = format!("version: 1\n{}", keys(&["alpha", "gamma", "delta"]));
    volume.swap(&[
        ("settings.yaml", SETTINGS),
        ("a.yaml", &a3),
        ("b.yaml", cut),
    ]);
    assert!(
        until(Duration::from_secs(5), || gate.failed_reloads() >= 1),
        "the broken set's reload was not counted"
    );
    assert!(!gate.knows("delta"), "a key of the broken set is served");
    assert!(gate.knows("moving") && gate.knows("gamma"));

    // A key id in two files of the next set: refused too.
    let dup = format!("version: 1\n{}", keys(&["beta", "alpha"]));
    volume.swap(&[
        ("settings.yaml", SETTINGS),
        ("a.yaml", &a3),
        ("b.yaml", &dup),
    ]);
    assert!(until(Duration::from_secs(5), || gate.failed_reloads() >= 2));
    assert!(!gate.knows("delta"));

    // The complete set is picked up.
    volume.swap(&[
        ("settings.yaml", SETTINGS),
        ("a.yaml", &a3),
        ("b.yaml", &b2),
    ]);
    assert!(
        until(Duration::from_secs(5), || gate.knows("delta")),
        "the repaired set was not loaded"
    );
    std::fs::remove_dir_all(&volume.dir).unwrap();
}

#[test]
fn a_half_written_file_is_not_served_and_its_last_write_is() {
    let dir = temp_dir("half");
    std::fs::write(dir.join("settings.yaml"), SETTINGS).unwrap();
    let path = dir.join("keys.yaml");
    std::fs::write(&path, format!("version: 1\n{}", keys(&["old"]))).unwrap();
    let gate = Running::start(&dir);
    assert!(gate.knows("old"));
    // Written in place, in two parts with a pause between them: the first part ends inside a
    // flow mapping, so it cannot parse.
    let full = format!(
        "version: 1\nkeys: [ {{ id: old, sha256: {}, on_behalf_of: any }},\n  {{ id: new, sha256: {}, on_behalf_of: any }} ]\n",
        digest("secret-old"),
        digest("secret-new")
    );
    let split = full.find("{ id: new").unwrap() + 12;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(&full.as_bytes()[..split]).unwrap();
    file.flush().unwrap();
    assert!(
        until(Duration::from_secs(5), || gate.failed_reloads() >= 1),
        "the half-written file was not tried"
    );
    assert!(gate.knows("old"), "the last good policy was dropped");
    assert!(!gate.knows("new"));
    file.write_all(&full.as_bytes()[split..]).unwrap();
    drop(file);
    assert!(
        until(Duration::from_secs(5), || gate.knows("new")),
        "the completed file was not loaded"
    );
    assert!(gate.knows("old"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// However a policy's keys are split over files (and its sections placed), the directory compiles
/// to the same keys, in file order, as the one file it was cut from.
#[test]
fn a_policy_split_into_files_compiles_like_the_single_file() {
    let ids: Vec<String> = (0..40).map(|i| format!("key-{i:02}")).collect();
    let entry = |id: &str, i: usize| {
        let mut text = format!(
            "  - id: {id}\n    sha256: {}\n    on_behalf_of: {}\n",
            digest(&format!("secret-{id}")),
            if i % 3 == 0 { "none" } else { "any" }
        );
        if i % 4 == 0 {
            text.push_str(&format!(
                "    rate_limit: {{ per_second: {}, burst: 3 }}\n",
                i + 1
            ));
        }
        if i % 5 == 0 {
            text.push_str("    routes: [ \"GET /chat/Dialog.json\" ]\n");
        }
        text
    };
    let sections = "upstream:\n  url: http://127.0.0.1:1\ndialog_rules:\n  mode: report\n";
    let single: String = ids.iter().enumerate().map(|(i, id)| entry(id, i)).collect();
    let single_dir = temp_dir("single");
    std::fs::write(
        single_dir.join("policy.yaml"),
        format!("version: 1\n{sections}keys:\n{single}"),
    )
    .unwrap();
    let expected = load_with(&single_dir.join("policy.yaml"), Secrets::Offline).unwrap();
    // A small deterministic generator: a cut after key i when the next value is below `p`.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % 100
    };
    for round in 0..12 {
        let dir = temp_dir("split");
        let mut files: Vec<String> = vec![String::new()];
        for (i, id) in ids.iter().enumerate() {
            files.last_mut().unwrap().push_str(&entry(id, i));
            if next() < 15 {
                files.push(String::new());
            }
        }
        // The sections go alone, or into one of the key files.
        let host = next() as usize % (files.len() + 1);
        for (n, keys) in files.iter().enumerate() {
            let extra = if n == host { sections } else { "" };
            let body = if keys.is_empty() {
                String::new()
            } else {
                format!("keys:\n{keys}")
            };
            std::fs::write(
                dir.join(format!("{n:03}.yaml")),
                format!("version: 1\n{extra}{body}"),
            )
            .unwrap();
        }
        if host == files.len() {
            std::fs::write(dir.join("zzz.yaml"), format!("version: 1\n{sections}")).unwrap();
        }
        let got =
            load_with(&dir, Secrets::Offline).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            format!("{:?}", got.keys),
            format!("{:?}", expected.keys),
            "round {round}"
        );
        assert_eq!(got.dialog_rules.mode, expected.dialog_rules.mode);
        assert_eq!(got.upstream.origin, expected.upstream.origin);
        for id in &ids {
            let d: [u8; 32] = {
                use sha2::Digest;
                sha2::Sha256::digest(format!("secret-{id}").as_bytes()).into()
            };
            assert_eq!(
                got.key_by_digest(&d).map(|(_, k)| k.id.to_string()),
                Some(id.clone())
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::remove_dir_all(&single_dir).unwrap();
}

/// A file written as JSON takes the fast parser; its errors still come with their places.
#[test]
fn a_json_file_in_the_directory_loads_and_its_errors_have_places() {
    let dir = temp_dir("json");
    std::fs::write(dir.join("a.yaml"), format!("version: 1\n{}", keys(&["a"]))).unwrap();
    let json = |sha: &str| {
        format!("{{\n \"version\": 1,\n \"keys\": [\n  {{\"id\": \"j\", \"sha256\": \"{sha}\"}}\n ]\n}}\n")
    };
    std::fs::write(dir.join("b.yaml"), json(&digest("secret-j"))).unwrap();
    let policy = load_with(&dir, Secrets::Offline).unwrap();
    let ids: Vec<&str> = policy.keys.iter().map(|k| &*k.id).collect();
    assert_eq!(ids, ["a", "j"]);
    std::fs::write(dir.join("b.yaml"), json("abc")).unwrap();
    assert_eq!(
        errors(&dir),
        "b.yaml: keys[0].sha256: must be 64 hex characters: the SHA-256 of the key \
         (`qbgate hash-key`) (line 4, column 25)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
