//! Hot reload: a watch on the policy file's directory, SIGHUP, and a slow periodic re-read, each
//! leading to compile -> build the next generation -> swap. An invalid policy keeps the last good
//! one, logs every error and counts a failed reload.
//!
//! The directory is watched, not the file: Kubernetes updates a mounted ConfigMap by swapping a
//! `..data` symlink and editors replace files by rename, and a watch on the file itself goes silent
//! after the first swap. For a policy directory (`--policy DIR`) the directory itself is watched
//! and the whole set of files is reloaded as one unit. Secret files named by the policy are
//! re-read on every reload; the periodic re-read (every minute) catches a secret that changed
//! alone. `listen` and `admin_listen` changes need a restart.
//!
//! Events come in bursts (a `..data` swap is several, a large write is many): a reload starts once
//! the watch has been quiet for 10 ms, and an event that comes while a reload runs leads to
//! another one after it. So a file caught half-written fails to compile (the last good policy
//! stays, the failure is logged and counted) and its last write is then picked up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::policy::Overrides;
use crate::{metrics, policy, Gateway, Runtime};

/// How often the policy is re-read even without an event.
const PERIODIC: Duration = Duration::from_secs(60);
/// A burst of events has ended when none came for this long.
const QUIET: Duration = Duration::from_millis(10);
/// A writer that never pauses does not hold a reload off for longer than this.
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// Why a reload ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Event,
    Signal,
    Periodic,
}

/// Watch `path` and reload into `gateway` until the process ends.
pub async fn watch(gateway: Arc<Gateway>, path: PathBuf, overrides: Overrides) {
    spawn(gateway, path, overrides);
    std::future::pending::<()>().await;
}

/// Start watching now and reload in a background task until the process ends.
pub fn spawn(gateway: Arc<Gateway>, path: PathBuf, overrides: Overrides) {
    Watch::arm(&path).run(gateway, path, overrides);
}

/// The triggers of reloads, armed before the policy is first read: a change made while the
/// gateway starts, or a SIGHUP sent then (whose default action ends the process), waits here
/// for [`Watch::run`] instead of being lost.
pub struct Watch {
    tx: mpsc::Sender<Trigger>,
    rx: mpsc::Receiver<Trigger>,
    watcher: Option<notify::RecommendedWatcher>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Watch {
    /// Watch the directory of `path` (or `path` itself, a policy directory) and take over
    /// SIGHUP. Needs a Tokio runtime.
    pub fn arm(path: &Path) -> Watch {
        let (tx, rx) = mpsc::channel::<Trigger>(16);
        let is_dir = path.is_dir();
        let dir = if is_dir {
            path.to_path_buf()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
        };
        let watcher = {
            let tx = tx.clone();
            let name = path.file_name().map(|n| n.to_os_string());
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Other files in the directory (logs, editors' swap files) are not our business;
                // Kubernetes' `..data` swap names no policy file, so `..`-names count too.
                // Reads (open, access, close without write) are not changes, and our own read of
                // the file produces them: reacting to them would re-read the policy forever.
                let ours = |f: &std::ffi::OsStr| {
                    let text = f.to_string_lossy();
                    text.starts_with("..")
                        || if is_dir {
                            !text.starts_with('.') && text.ends_with(".yaml")
                        } else {
                            Some(f) == name.as_deref()
                        }
                };
                let relevant = event.is_ok_and(|e| {
                    !matches!(e.kind, notify::EventKind::Access(_))
                        && (e.paths.is_empty()
                            || e.paths.iter().any(|p| p.file_name().is_some_and(&ours)))
                });
                if relevant {
                    let _ = tx.try_send(Trigger::Event);
                }
            })
        };
        let watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher;
                match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(error) => {
                        tracing::warn!(%error, dir = %dir.display(), "cannot watch the policy directory; SIGHUP and the periodic re-read still reload");
                        None
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "no file watcher; SIGHUP and the periodic re-read still reload");
                None
            }
        };
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot take SIGHUP; the watch and the periodic re-read still reload");
                None
            }
        };
        Watch {
            tx,
            rx,
            watcher,
            hangup,
        }
    }

    /// Reload into `gateway` on every trigger (those that came since [`Watch::arm`] first) until
    /// the process ends.
    pub fn run(self, gateway: Arc<Gateway>, path: PathBuf, overrides: Overrides) {
        let Watch {
            tx,
            mut rx,
            watcher,
            hangup,
        } = self;
        if let Some(mut hangup) = hangup {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let _ = tx.send(Trigger::Signal).await;
                }
            });
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIODIC);
            tick.tick().await;
            loop {
                tick.tick().await;
                if tx.send(Trigger::Periodic).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            // The watcher lives as long as the loop.
            let _watcher = watcher;
            while let Some(mut trigger) = rx.recv().await {
                let deadline = tokio::time::Instant::now() + MAX_SETTLE;
                while let Ok(Some(more)) = tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + QUIET),
                    rx.recv(),
                )
                .await
                {
                    if more != Trigger::Periodic {
                        trigger = more;
                    }
                }
                // An event for an unchanged file (a touch, a chmod, or a change the first read
                // already saw) is not worth a compile.
                if trigger == Trigger::Event && unchanged(&gateway, &path) {
                    continue;
                }
                reload(&gateway, &path, &overrides, trigger == Trigger::Periodic).await;
            }
        });
    }
}

/// Is the file (or directory) byte for byte the one the serving policy was compiled from?
fn unchanged(gateway: &Gateway, path: &std::path::Path) -> bool {
    policy::source_digest(path).as_deref() == Some(gateway.runtime().policy.digest.as_str())
}

/// Compile the file and swap it in. `quiet`: skip the swap (and the log) when nothing changed.
/// Returns whether a new generation is serving.
pub async fn reload(
    gateway: &Gateway,
    path: &std::path::Path,
    overrides: &Overrides,
    quiet: bool,
) -> bool {
    // Compiling a 10,000-key policy takes a sizeable fraction of a second, mostly YAML parsing:
    // off the serving threads, or a one-CPU sidecar (current-thread runtime) would stop
    // answering while it runs.
    // The thread hands the policy over first, then gives its parse's memory back meanwhile.
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking({
        let path = path.to_owned();
        move || {
            let _ = tx.send(policy::load(&path));
            give_back();
        }
    });
    let compiled = rx.await.unwrap_or_else(|_| {
        Err(policy::PolicyErrors(vec![policy::compile::PolicyError {
            path: "policy".into(),
            message: "the compile task failed".into(),
            place: None,
        }]))
    });
    let compiled = compiled.and_then(|mut p| {
        overrides.apply(&mut p).map_err(|message| {
            policy::PolicyErrors(vec![policy::compile::PolicyError {
                path: "--upstream".into(),
                message,
                place: None,
            }])
        })?;
        Ok(p)
    });
    let next = match compiled {
        Ok(next) => next,
        Err(errors) => {
            for error in &errors.0 {
                tracing::error!(%error, "policy reload failed; the last good policy stays");
            }
            metrics::reload("failure");
            return false;
        }
    };
    let current = gateway.runtime();
    if quiet
        && current.policy.digest == next.digest
        && current.policy.upstream.authorization == next.upstream.authorization
    {
        return false;
    }
    let digest = next.digest.clone();
    match Runtime::new(next, Some(&current)).await {
        Ok(runtime) => {
            gateway.swap(runtime);
            metrics::reload("success");
            metrics::policy_info(&current.policy.digest, &digest);
            metrics::digest_not_after(
                current.policy.digest_deadlines(),
                gateway.runtime().policy.digest_deadlines(),
            );
            tracing::info!(digest, "policy reloaded");
            // The old generation is gone once the requests that hold it finish: mostly now.
            drop(current);
            tokio::task::spawn_blocking(give_back);
            true
        }
        Err(error) => {
            tracing::error!(%error, "policy reload failed; the last good policy stays");
            metrics::reload("failure");
            false
        }
    }
}

/// Return the memory a compile freed (the parse's temporaries, a superseded policy) to the
/// system now: mimalloc otherwise keeps it until this thread allocates again, which for a
/// reload thread may be never. Only this thread's heap: pages freed into other threads' heaps
/// stay (see bench/RESULTS.md, "YAML fast path").
fn give_back() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; when
    // mimalloc is not the global allocator (the library's tests) it only tidies its own empty heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
