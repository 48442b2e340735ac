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
//!
//! Every compile runs on one thread kept for the life of the process (`qbgate-reload`), and every
//! superseded generation is dropped there: never on a serving thread (a one-CPU sidecar runs a
//! current-thread runtime, which a 10,000-key compile or drop would stall), and the policies'
//! memory stays in that thread's heap, which it gives back to the system once a reload is over.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::policy::{Overrides, Policy, PolicyErrors};
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
                let skip_unchanged = trigger == Trigger::Event;
                let quiet = trigger == Trigger::Periodic;
                reload_unless(&gateway, &path, &overrides, quiet, skip_unchanged).await;
            }
        });
    }
}

/// Read and compile the policy at `path` on the reload thread: what `qbgate run` starts with, so
/// the first generation's memory is that thread's too, and the parse's temporaries are given back.
pub async fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    let loaded = compile(path, None).await;
    retire(None);
    match loaded {
        Some(result) => result,
        None => Err(task_failed()),
    }
}

/// Compile the file and swap it in. `quiet`: skip the swap (and the log) when nothing changed.
/// Returns whether a new generation is serving.
pub async fn reload(
    gateway: &Gateway,
    path: &std::path::Path,
    overrides: &Overrides,
    quiet: bool,
) -> bool {
    reload_unless(gateway, path, overrides, quiet, false).await
}

/// [`reload`]; `skip_unchanged`: not even a compile when the file (or directory) is byte for byte
/// the one the serving policy was compiled from.
async fn reload_unless(
    gateway: &Gateway,
    path: &std::path::Path,
    overrides: &Overrides,
    quiet: bool,
    skip_unchanged: bool,
) -> bool {
    let current = gateway.runtime();
    let unless = skip_unchanged.then(|| current.policy.digest.clone());
    let compiled = match compile(path, unless).await {
        None => {
            retire(None);
            return false;
        }
        Some(compiled) => compiled,
    };
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
            retire(None);
            for error in &errors.0 {
                tracing::error!(%error, "policy reload failed; the last good policy stays");
            }
            metrics::reload("failure");
            return false;
        }
    };
    if quiet
        && current.policy.digest == next.digest
        && current.policy.upstream.authorization == next.upstream.authorization
    {
        retire_policy(next);
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
            // The old generation is gone once the requests that hold it finish: mostly now, on
            // the reload thread.
            retire(Some(current));
            true
        }
        Err(error) => {
            retire(None);
            tracing::error!(%error, "policy reload failed; the last good policy stays");
            metrics::reload("failure");
            false
        }
    }
}

/// What the reload thread is asked to do.
enum Job {
    /// Compile the policy at `path`, unless its digest is `unless`.
    Load {
        path: PathBuf,
        unless: Option<String>,
        reply: oneshot::Sender<Loaded>,
    },
    /// A reload is over: drop what it superseded (a generation, or a compiled policy that was
    /// not needed), then give the freed memory back.
    Retire(Option<Box<dyn Send>>),
}

/// A compiled policy, or `None`: the source's digest is the one the job named.
type Loaded = Option<Result<Policy, PolicyErrors>>;

/// The reload thread's queue: started on first use; `None` if no thread could be started.
fn reload_thread() -> Option<&'static std::sync::mpsc::Sender<Job>> {
    static THREAD: OnceLock<Option<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("qbgate-reload".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            Job::Load {
                                path,
                                unless,
                                reply,
                            } => {
                                let _ = reply.send(load_now(&path, unless));
                            }
                            Job::Retire(retired) => {
                                drop(retired);
                                give_back();
                            }
                        }
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(error) => {
                    tracing::warn!(%error, "no reload thread; policies compile on the blocking pool");
                    None
                }
            }
        })
        .as_ref()
}

fn load_now(path: &Path, unless: Option<String>) -> Loaded {
    policy::compile::load_unless(path, unless.as_deref())
}

/// Compile on the reload thread (or, failing that, the blocking pool); the caller waits without
/// holding up its runtime.
async fn compile(path: &Path, unless: Option<String>) -> Loaded {
    let (reply, answer) = oneshot::channel();
    let path = path.to_owned();
    match reload_thread() {
        Some(thread) => {
            let job = Job::Load {
                path,
                unless,
                reply,
            };
            if thread.send(job).is_err() {
                return Some(Err(task_failed()));
            }
        }
        None => {
            tokio::task::spawn_blocking(move || {
                let _ = reply.send(load_now(&path, unless));
            });
        }
    }
    answer.await.unwrap_or_else(|_| Some(Err(task_failed())))
}

/// Hand what a reload superseded to the reload thread, to drop and give back there.
fn retire(generation: Option<Arc<Runtime>>) {
    send_retired(generation.map(|g| Box::new(g) as Box<dyn Send>));
}

fn retire_policy(policy: Policy) {
    send_retired(Some(Box::new(policy)));
}

fn send_retired(retired: Option<Box<dyn Send>>) {
    match reload_thread() {
        Some(thread) => {
            let _ = thread.send(Job::Retire(retired));
        }
        None => drop(retired),
    }
}

fn task_failed() -> PolicyErrors {
    policy::PolicyErrors(vec![policy::compile::PolicyError {
        path: "policy".into(),
        message: "the compile task failed".into(),
        place: None,
    }])
}

/// Return the memory a reload freed (the parse's temporaries, a superseded generation) to the
/// system now: mimalloc otherwise keeps it until this thread allocates again, at the next
/// reload. Only this thread's heap: the policies are allocated here, so most of what a reload
/// frees is (see bench/RESULTS.md, "YAML fast path").
fn give_back() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; when
    // mimalloc is not the global allocator (the library's tests) it only tidies its own empty heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
