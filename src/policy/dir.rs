//! A policy directory (`--policy DIR`): every `*.yaml` in it is part of one policy.
//!
//! So a fleet's keys can come from several ConfigMaps or Secrets projected into one volume:
//! `keys` may be spread across files, every other section stands in at most one file, and each
//! file says `version: 1`. Hidden files (Kubernetes' `..data` and its timestamped directories,
//! editors' swap files) are skipped; symlinks are followed, so the files a Kubernetes volume links
//! through `..data` are read where the link points now. An error names its file, and its line and
//! column where the parser knows them.
//!
//! Parsed files are kept, by path and content: a reload parses only the files whose bytes
//! changed (after a `..data` swap every file is a new inode, so the content, not the inode, is
//! the key). Changed files are parsed in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::compile::{self, PolicyError, PolicyErrors, Secrets};
use super::file::{self, At, PolicyFile};
use super::Policy;

/// One file of the directory, read.
struct Part {
    /// The file's name in the directory, as errors name it.
    name: String,
    path: PathBuf,
    text: Arc<str>,
}

/// A parsed file, and whether its values carry places (not when parsed as JSON).
type ParsedFile = (Arc<PolicyFile>, bool);

/// A file parsed before: its text, and the parse (with places, or without from the JSON path).
struct Parsed {
    text: Arc<str>,
    file: Arc<PolicyFile>,
    spans: bool,
}

/// Parsed files by path, across reloads. Only files of policy directories; a directory's entry
/// is pruned of files that left it on each load.
static CACHE: Mutex<Option<HashMap<PathBuf, Parsed>>> = Mutex::new(None);

/// Read and compile the policy directory `dir`.
pub(super) fn load(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    let started = Instant::now();
    let parts = read(dir)?;
    let digest = digest_of(&parts);
    let read_done = Instant::now();
    let (parsed, fresh) = parse_all(dir, &parts, false)?;
    let parse_done = Instant::now();
    let mut result = assemble(&parts, &parsed, &digest, env, secrets);
    // A file parsed as JSON has no places: say where each error is from the YAML parse.
    if result.is_err() && parsed.iter().any(|p| !p.1) {
        let (parsed, _) = parse_all(dir, &parts, true)?;
        result = assemble(&parts, &parsed, &digest, env, secrets);
    }
    // Where a load's time goes, for an operator tuning how the keys are split.
    tracing::debug!(
        files = parts.len(),
        parsed = fresh,
        read_ms = (read_done - started).as_secs_f64() * 1e3,
        parse_ms = (parse_done - read_done).as_secs_f64() * 1e3,
        compile_ms = parse_done.elapsed().as_secs_f64() * 1e3,
        "policy directory read"
    );
    result
}

/// Short hex SHA-256 of what a policy path holds now: a file's bytes, or a directory's files
/// (names and bytes). The same digest a policy compiled from it carries; `None` if unreadable.
pub fn source_digest(path: &Path) -> Option<String> {
    if path.is_dir() {
        read(path).ok().map(|parts| digest_of(&parts))
    } else {
        std::fs::read(path)
            .ok()
            .map(|bytes| super::digest_hex(&bytes)[..12].to_string())
    }
}

fn dir_error(dir: &Path, message: String) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        path: dir.display().to_string(),
        message,
        place: None,
    }])
}

/// The directory's policy files, by name.
fn read(dir: &Path) -> Result<Vec<Part>, PolicyErrors> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(dir, format!("cannot read the policy directory: {e}")))?;
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| dir_error(dir, format!("cannot read the policy directory: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".yaml") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a Kubernetes volume's files are links through `..data`.
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => parts.push(Part {
                name,
                path,
                text: Arc::from(text),
            }),
            Err(e) => errors.push(PolicyError {
                path: name,
                message: format!("cannot read the policy file: {e}"),
                place: None,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    if parts.is_empty() {
        return Err(dir_error(dir, "holds no policy file (*.yaml)".into()));
    }
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(parts)
}

/// The policy digest of a directory: every file's name and bytes, in name order.
fn digest_of(parts: &[Part]) -> String {
    let mut all = Vec::with_capacity(parts.iter().map(|p| p.name.len() + p.text.len() + 16).sum());
    for part in parts {
        all.extend_from_slice(part.name.as_bytes());
        all.push(0);
        all.extend_from_slice(&(part.text.len() as u64).to_le_bytes());
        all.extend_from_slice(part.text.as_bytes());
    }
    super::digest_hex(&all)[..12].to_string()
}

/// Every file parsed, in `parts` order, each with whether it has places: from the cache when its
/// text is unchanged, else parsed now (in parallel); and how many were parsed now. `spans`: parse
/// every file with places.
fn parse_all(
    dir: &Path,
    parts: &[Part],
    spans: bool,
) -> Result<(Vec<ParsedFile>, usize), PolicyErrors> {
    let mut out: Vec<Option<ParsedFile>> = vec![None; parts.len()];
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.retain(|path, _| path.parent() != Some(dir) || parts.iter().any(|p| &p.path == path));
    let mut todo = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        match cache.get(&part.path) {
            Some(hit) if hit.text == part.text && (hit.spans || !spans) => {
                out[i] = Some((hit.file.clone(), hit.spans));
            }
            _ => todo.push(i),
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(todo.len())
        .max(1);
    let parse_one = |i: usize| -> (usize, Result<(PolicyFile, bool), PolicyErrors>) {
        let text = &parts[i].text;
        if !spans {
            if let Some(file) = compile::parse_fast(text) {
                return (i, Ok((file, false)));
            }
        }
        (i, compile::parse(text).map(|file| (file, true)))
    };
    let results: Vec<_> = if threads == 1 {
        todo.iter().map(|&i| parse_one(i)).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mine: Vec<usize> = todo.iter().copied().skip(t).step_by(threads).collect();
                    scope.spawn(move || mine.into_iter().map(parse_one).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let mut errors = Vec::new();
    for (i, result) in results {
        match result {
            Ok((file, has_spans)) => {
                let file = Arc::new(file);
                cache.insert(
                    parts[i].path.clone(),
                    Parsed {
                        text: parts[i].text.clone(),
                        file: file.clone(),
                        spans: has_spans,
                    },
                );
                out[i] = Some((file, has_spans));
            }
            Err(e) => errors.extend(e.0.into_iter().map(|e| in_file(&parts[i].name, e))),
        }
    }
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    // A parse thread that panicked left its files out: say so rather than serve without them.
    let mut missing = Vec::new();
    let parsed: Vec<_> = out
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| {
            if p.is_none() {
                missing.push(PolicyError {
                    path: parts[i].name.clone(),
                    message: "the parse failed".into(),
                    place: None,
                });
            }
            p
        })
        .collect();
    if missing.is_empty() {
        Ok((parsed, todo.len()))
    } else {
        Err(PolicyErrors(missing))
    }
}

/// An error inside the file `name`.
fn in_file(name: &str, mut error: PolicyError) -> PolicyError {
    error.path = format!("{name}: {}", error.path);
    error
}

/// The line where the top-level `section` starts in `text` (block YAML), for an error about the
/// section as a whole.
fn section_line(text: &str, section: &str) -> Option<(u64, u64)> {
    text.lines()
        .position(|line| {
            line.strip_prefix(section)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| (i as u64 + 1, 1))
}

/// Which file each part of the merged policy came from, for the compiler's errors.
struct Owners<'a> {
    /// Top-level section -> index of the file that gives it.
    sections: HashMap<&'static str, usize>,
    /// Per file, in order: (its first index in the merged `keys`, each merged index's index in
    /// the file).
    keys: Vec<(usize, Vec<usize>)>,
    parts: &'a [Part],
}

impl Owners<'_> {
    /// Put `error` (its path in the merged policy) in the words of the file it comes from.
    fn place(&self, mut error: PolicyError, dir_name: &str) -> PolicyError {
        if let Some(rest) = error.path.strip_prefix("keys[") {
            let (index, tail) = rest.split_once(']').unwrap_or((rest, ""));
            if let Ok(index) = index.parse::<usize>() {
                for (file, (start, local)) in self.keys.iter().enumerate() {
                    if let Some(&j) = index.checked_sub(*start).and_then(|k| local.get(k)) {
                        error.path = format!("keys[{j}]{tail}");
                        return in_file(&self.parts[file].name, error);
                    }
                }
            }
        }
        let section = error
            .path
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_string();
        match self.sections.get(section.as_str()) {
            Some(&file) => in_file(&self.parts[file].name, error),
            None => in_file(dir_name, error),
        }
    }
}

/// Merge the parsed files into one policy and compile it.
fn assemble(
    parts: &[Part],
    parsed: &[ParsedFile],
    digest: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let mut merged = PolicyFile {
        version: At {
            value: 1,
            line: 0,
            column: 0,
        },
        listen: None,
        admin_listen: None,
        upstream: None,
        client: None,
        shutdown: None,
        max_body_bytes: None,
        qb_token: None,
        rate_limit: None,
        tracing: None,
        dialog_rules: None,
        keys: Some(Vec::new()),
    };
    let mut owners = Owners {
        sections: HashMap::new(),
        keys: Vec::with_capacity(parts.len()),
        parts,
    };
    let mut ids: HashMap<&str, (usize, u64, u64)> = HashMap::new();
    let mut all_keys: Vec<&file::Key> = Vec::new();
    for (i, (file, _)) in parsed.iter().enumerate() {
        let part = &parts[i];
        let file = file.as_ref();
        if file.version.value != 1 {
            errors.push(in_file(
                &part.name,
                PolicyError {
                    path: "version".into(),
                    message: "must be 1".into(),
                    place: Some((file.version.line, file.version.column)),
                },
            ));
        }
        // Every section but `keys` stands in at most one file.
        macro_rules! section {
            ($($field:ident),* $(,)?) => {$(
                if let Some(value) = &file.$field {
                    let name = stringify!($field);
                    match owners.sections.get(name) {
                        Some(&first) => errors.push(PolicyError {
                            path: format!("{}: {name}", part.name),
                            message: format!(
                                "is also given in {}: a section stands in one file of a policy directory",
                                parts[first].name
                            ),
                            place: section_line(&part.text, name),
                        }),
                        None => {
                            owners.sections.insert(name, i);
                            merged.$field = Some(value.clone());
                        }
                    }
                }
            )*};
        }
        section!(
            listen,
            admin_listen,
            upstream,
            client,
            shutdown,
            max_body_bytes,
            qb_token,
            rate_limit,
            tracing,
            dialog_rules,
        );
        let mut local = Vec::new();
        for (j, key) in file.keys.iter().flatten().enumerate() {
            let id = key.id.value.trim();
            match ids.get(id) {
                Some(&(first, line, column)) if first != i => {
                    errors.push(PolicyError {
                        path: format!("{}: keys[{j}].id", part.name),
                        message: format!(
                            "duplicate key id `{id}`: also in {} (line {line}, column {column})",
                            parts[first].name
                        ),
                        place: Some((key.id.line, key.id.column)),
                    });
                    continue;
                }
                Some(_) => {} // the compiler reports a duplicate within one file
                None => {
                    ids.insert(id, (i, key.id.line, key.id.column));
                }
            }
            local.push(j);
            all_keys.push(key);
        }
        owners.keys.push((all_keys.len() - local.len(), local));
    }
    let dir_name = parts
        .first()
        .and_then(|p| p.path.parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    match compile::compile_parts(merged, &all_keys, digest.to_string(), env, secrets) {
        Ok(policy) if errors.is_empty() => Ok(policy),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(compiled) => {
            errors.extend(compiled.0.into_iter().map(|e| owners.place(e, &dir_name)));
            Err(PolicyErrors(errors))
        }
    }
}
