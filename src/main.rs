//! The `qbgate` command line: parse arguments, load the policy, call the library, map errors to
//! exit codes (64 for a bad policy, as `EX_USAGE`).

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qbgate::policy;

/// mimalloc rather than glibc's malloc (see `qbgate::alloc`).
#[global_allocator]
static ALLOCATOR: qbgate::alloc::Allocator = qbgate::alloc::Allocator;

/// Exit code for a policy that does not compile (sysexits `EX_USAGE`).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "qbgate",
    version,
    about = "API-key gateway for the QuickBlox REST API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Run {
        #[arg(long, env = "QBGATE_POLICY")]
        policy: PathBuf,
        /// Overrides the policy's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides the policy's `admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Overrides the policy's `upstream.url`.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Validate a policy: print every error with its place; exit 0 or 1.
    Check {
        #[arg(long, env = "QBGATE_POLICY")]
        policy: PathBuf,
        /// Also read the secrets the policy refers to (`{env: ..}`, `{file: ..}`); without it,
        /// only their form is checked, so a CI job can check a policy without them.
        #[arg(long)]
        resolve_secrets: bool,
    },
    /// Read a key on stdin, print its policy digest.
    HashKey,
    /// Print a new random key and its digest; with `--rotate`, also the `digests:` to paste into
    /// that key's entry (the new digest added, the old ones given a `not_after`).
    GenKey {
        /// The id of the key to rotate (read from `--policy`; no secret is read).
        #[arg(long, requires = "policy")]
        rotate: Option<String>,
        #[arg(long, requires = "rotate")]
        policy: Option<PathBuf>,
        /// When the old digests stop working (RFC 3339); default now + 7 days.
        #[arg(long, requires = "rotate")]
        not_after: Option<String>,
    },
    /// Print the JSON Schema of the policy file (for editors' YAML language servers).
    Schema,
    /// Gateway + built-in QuickBlox sandbox with the example policy.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            policy,
            resolve_secrets,
        } => match policy::load_with(
            &policy,
            if resolve_secrets {
                policy::Secrets::Resolve
            } else {
                policy::Secrets::Offline
            },
        ) {
            Ok(p) => {
                for key in p.keys.iter().filter(|k| {
                    k.on_behalf_of == policy::OnBehalfOf::Any
                        && k.powers.contains(policy::Power::MintTokens)
                }) {
                    eprintln!(
                        "{}: warning: key `{}` has on_behalf_of: any and mint_tokens: it can mint a session token for any user, outside every rule",
                        policy.display(),
                        key.id
                    );
                }
                for key in &p.keys {
                    let covered = key
                        .unchecked_routes
                        .iter()
                        .filter_map(qbgate::rules::catalog::covered_row);
                    for entry in covered {
                        eprintln!(
                            "{}: warning: key `{}`: an unchecked_routes entry names {} {}, a catalog endpoint: its own rule judges it ({}), the entry does nothing there",
                            policy.display(),
                            key.id,
                            entry.method,
                            entry.path,
                            entry.rule.word()
                        );
                    }
                }
                println!(
                    "{}: ok: {} keys, policy digest {}",
                    policy.display(),
                    p.keys.len(),
                    p.digest
                );
                // What each key reaches in the endpoint catalog: what an upgrade took away is
                // under `refused` (a route outside the catalog is 403 unless `unchecked_routes`
                // lists it).
                for key in &p.keys {
                    println!("{}: {}", key.id, qbgate::rules::catalog::reach(key));
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Schema => {
            print!("{}", policy::schema());
            ExitCode::SUCCESS
        }
        Command::HashKey => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut key) {
                eprintln!("qbgate: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
            // A trailing newline from `echo` is not part of the key.
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!("qbgate: no key on stdin");
                return ExitCode::FAILURE;
            }
            println!("{}", policy::digest_hex(key.as_bytes()));
            ExitCode::SUCCESS
        }
        Command::GenKey {
            rotate,
            policy,
            not_after,
        } => {
            // The entry to rotate is read before a key is made: nothing printed on an error.
            let rotation = match (rotate, policy) {
                (Some(id), Some(path)) => match rotation(&id, &path, not_after.as_deref()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("qbgate: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                _ => None,
            };
            let mut bytes = [0u8; 32];
            if let Err(e) = getrandom::fill(&mut bytes) {
                eprintln!("qbgate: no randomness from the OS: {e}");
                return ExitCode::FAILURE;
            }
            let key = format!("qbg_{}", hex::encode(bytes));
            let digest = policy::digest_hex(key.as_bytes());
            println!("key:    {key}\nsha256: {digest}");
            if let Some((id, old)) = rotation {
                println!(
                    "# In key `{id}`'s entry, replace `sha256:` (or `digests:`) with:\n    digests:"
                );
                for (sha, not_after) in old {
                    println!("      - sha256: {sha}\n        not_after: {not_after}");
                }
                println!("      - sha256: {digest}");
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            policy,
            listen,
            admin_listen,
            upstream,
        } => {
            let _logs = init_logging();
            let overrides = qbgate::policy::Overrides {
                listen,
                admin_listen,
                upstream,
            };
            runtime(qbgate::cli::run(policy, overrides))
        }
        Command::Demo { listen } => {
            let _logs = init_logging();
            runtime(qbgate::cli::demo(listen))
        }
    }
}

fn runtime(
    future: impl std::future::Future<Output = Result<(), qbgate::cli::Failure>>,
) -> ExitCode {
    // A sidecar usually gets one CPU: a single-threaded runtime then saves the work-stealing
    // machinery and the cross-thread wake-ups. `available_parallelism` honours the affinity mask.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qbgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(qbgate::cli::Failure::Policy(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(EX_USAGE)
        }
        Err(qbgate::cli::Failure::Other(message)) => {
            eprintln!("qbgate: {message:#}");
            ExitCode::FAILURE
        }
    }
}

/// `QBGATE_LOG` (EnvFilter syntax, default `info`); `QBGATE_LOG_FORMAT` = `json` | `text`
/// (default: json unless stdout is a terminal).
///
/// Lines are written by a background thread (tracing-appender), so a slow stdout never stalls the
/// request path; the returned guard flushes what is queued when `main` returns.
fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Never drop log lines: under pressure the request path waits rather than losing them.
        .lossy(false)
        .finish(std::io::stdout());
    let filter = tracing_subscriber::EnvFilter::try_from_env("QBGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match std::env::var("QBGATE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    qbgate::access_log::install(json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // Every line written while a request is served carries its request id (and trace id).
    if json {
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        builder
            .json()
            .event_format(qbgate::access_log::WithRequest::new(format, true))
            .init();
    } else {
        let ansi = std::io::stdout().is_terminal();
        let format = tracing_subscriber::fmt::format().with_ansi(ansi);
        builder
            .with_ansi(ansi)
            .event_format(qbgate::access_log::WithRequest::new(format, false))
            .init();
    }
    guard
}

/// For `gen-key --rotate`: the key id and its current digests, each with the `not_after` to
/// write (one it already has, else `not_after`, default now + 7 days). The policy is read
/// offline: no secret it names is read.
fn rotation(
    id: &str,
    path: &std::path::Path,
    not_after: Option<&str>,
) -> Result<(String, Vec<(String, String)>), String> {
    let deadline = match not_after {
        Some(text) => humantime::parse_rfc3339_weak(text.trim()).map_err(|_| {
            format!(
                "--not-after: must be an RFC 3339 time such as 2027-01-01T00:00:00Z, not `{text}`"
            )
        })?,
        None => std::time::SystemTime::now() + std::time::Duration::from_secs(7 * 86_400),
    };
    let p = policy::load_with(path, policy::Secrets::Offline).map_err(|e| e.to_string())?;
    let (index, key) = p
        .keys
        .iter()
        .enumerate()
        .find(|(_, k)| k.id.as_ref() == id)
        .ok_or_else(|| format!("{}: no key `{id}`", path.display()))?;
    let old = p
        .key_digests(index as u32)
        .into_iter()
        .zip(&key.digests)
        .map(|(sha, d)| {
            let at = d.not_after.unwrap_or(deadline);
            (
                hex::encode(sha),
                humantime::format_rfc3339_seconds(at).to_string(),
            )
        })
        .collect();
    Ok((id.to_string(), old))
}
