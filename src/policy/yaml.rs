//! A strict reader for the plain block YAML policies are written in, ten times faster than the
//! full YAML parser: what makes a 10,000-key YAML policy start and reload in tens of milliseconds.
//!
//! It reads a subset: block mappings and sequences indented with spaces, plain / single-quoted /
//! double-quoted scalars on one line, one-line flow sequences and mappings of those (`[a, b]`,
//! `{ env: X }`), comments, an optional leading `---`. Anything else (anchors, aliases, tags,
//! block scalars, multi-line scalars, escapes, tabs, empty values, a plain scalar the YAML
//! schemas could read as something other than a string, integer or `true`/`false`) answers
//! `None`, and the caller parses the text with serde-saphyr, which also gives every error its
//! place.
//!
//! The text is read straight into the file structs, with no tree in between: [`read`] is a serde
//! `Deserializer` walking the lines, which visits every value as serde_json visits the same value
//! held in a `serde_json::Value` (so this path and the JSON fast path read the structs alike),
//! and which is stricter where serde_json is lenient (a struct is read from a mapping only, not
//! from a sequence). Any value that does not fit the structs answers `None` as well, and so does
//! a key written twice in one mapping: every mapping of a policy is read into a struct, whose
//! visitor refuses a field it has already seen. The differential tests check that what this
//! path reads compiles to what serde-saphyr's parse compiles to.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;

/// Nesting deeper than this is not policy-shaped: answered `None` (and bounds the recursion).
const MAX_DEPTH: usize = 32;

/// `text` read into `T` when it is written in the subset and fits `T`, else `None`.
pub fn read<T: DeserializeOwned>(text: &str) -> Option<T> {
    let mut reader = Reader {
        lines: lines(text)?,
        pos: 0,
    };
    if reader.lines[0].indent != 0 {
        return None;
    }
    let value = T::deserialize(Block {
        r: &mut reader,
        indent: 0,
        depth: 0,
    })
    .ok()?;
    (reader.pos == reader.lines.len()).then_some(value)
}

/// The lines that hold content (comments and blank lines dropped), `None` outside the subset.
fn lines(text: &str) -> Option<Vec<Line<'_>>> {
    let mut lines = Vec::with_capacity(text.len() / 32);
    let mut started = false;
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.contains('\t') || raw.starts_with('\u{feff}') {
            return None;
        }
        let content = raw.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if !started && raw == "---" {
            started = true;
            continue;
        }
        started = true;
        if content.starts_with("---") || content.starts_with("...") || content.starts_with('%') {
            return None;
        }
        lines.push(Line {
            indent: raw.len() - content.len(),
            text: content,
        });
    }
    (!lines.is_empty()).then_some(lines)
}

#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    /// From the first non-space character; comments still in it.
    text: &'a str,
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

/// Why the text was not read: outside the subset, or not the shape of the structs. No message:
/// the caller parses the text again with serde-saphyr, whose errors say what is wrong.
#[derive(Debug)]
struct Unfit;

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not in the fast reader's subset")
    }
}

impl std::error::Error for Unfit {}

impl de::Error for Unfit {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Unfit
    }
}

/// A scalar as the subset types it.
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
}

impl<'a> Scalar<'a> {
    /// Visited as serde_json visits a `Value` holding it: an integer as `u64` unless negative.
    fn visit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Unfit> {
        match self {
            Scalar::Bool(b) => visitor.visit_bool(b),
            Scalar::Int(n) => match u64::try_from(n) {
                Ok(n) => visitor.visit_u64(n),
                Err(_) => visitor.visit_i64(n),
            },
            Scalar::Str(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Scalar::Str(Cow::Owned(s)) => visitor.visit_string(s),
        }
    }
}

/// The block node starting at the reader's current line, whose indent is `indent`.
struct Block<'r, 'a> {
    r: &'r mut Reader<'a>,
    indent: usize,
    depth: usize,
}

impl Block<'_, '_> {
    /// Whether the node is a sequence (else a mapping); `Err` when no node starts here.
    fn is_sequence(&self) -> Result<bool, Unfit> {
        if self.depth > MAX_DEPTH {
            return Err(Unfit);
        }
        let line = self.r.lines.get(self.r.pos).ok_or(Unfit)?;
        if line.indent != self.indent {
            return Err(Unfit);
        }
        Ok(is_item(line.text))
    }
}

/// What the three readers (block, inline, flow) do alike: the subset has no null, so a value that
/// is there is `Some`; a newtype is its content; the policy has no externally tagged enum, so an
/// enum is not this path's to guess; everything else is read by `deserialize_any`.
macro_rules! same_as_every_reader {
    () => {
        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Unfit> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Unfit> {
            Err(Unfit)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            unit unit_struct seq tuple tuple_struct map identifier ignored_any
        }
    };
}

impl<'de> de::Deserializer<'de> for Block<'_, 'de> {
    type Error = Unfit;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
        let (r, indent, depth) = (self.r, self.indent, self.depth);
        if (Block { r, indent, depth }).is_sequence()? {
            let mut items = BlockSeq { r, indent, depth };
            let value = visitor.visit_seq(&mut items)?;
            // A visitor that stopped before the end: serde_json would refuse the length too.
            items.at_end().then_some(value).ok_or(Unfit)
        } else {
            let mut entries = BlockMap {
                r,
                indent,
                depth,
                rest: "",
            };
            let value = visitor.visit_map(&mut entries)?;
            entries.at_end().then_some(value).ok_or(Unfit)
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unfit> {
        // serde_json would fill a struct from a sequence, field by field; YAML does not.
        if self.is_sequence()? {
            return Err(Unfit);
        }
        self.deserialize_any(visitor)
    }

    same_as_every_reader!();
}

/// The items of a block sequence.
struct BlockSeq<'r, 'a> {
    r: &'r mut Reader<'a>,
    indent: usize,
    depth: usize,
}

impl BlockSeq<'_, '_> {
    fn at_end(&self) -> bool {
        // A sequence may stand at its key's indent: a line there that is no item ends it.
        self.r.lines.get(self.r.pos).is_none_or(|line| {
            line.indent < self.indent || (line.indent == self.indent && !is_item(line.text))
        })
    }
}

impl<'de> de::SeqAccess<'de> for BlockSeq<'_, 'de> {
    type Error = Unfit;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unfit> {
        if self.at_end() {
            return Ok(None);
        }
        let line = self.r.lines[self.r.pos];
        if line.indent > self.indent {
            return Err(Unfit);
        }
        let rest = &line.text[1..];
        let after = rest.trim_start_matches(' ');
        let depth = self.depth + 1;
        if after.is_empty() || after.starts_with('#') {
            // `-` alone: the item is the block on the next lines, indented deeper.
            self.r.pos += 1;
            let next = self.r.lines.get(self.r.pos).ok_or(Unfit)?;
            if next.indent <= self.indent {
                return Err(Unfit);
            }
            let indent = next.indent;
            return seed
                .deserialize(Block {
                    r: self.r,
                    indent,
                    depth,
                })
                .map(Some);
        }
        if is_item(after) || key_end(after).is_some() {
            // `- key: value` or `- - x`: a block node starting in this line, at `column`.
            let column = self.indent + 1 + (rest.len() - after.len());
            self.r.lines[self.r.pos] = Line {
                indent: column,
                text: after,
            };
            let block = Block {
                r: self.r,
                indent: column,
                depth,
            };
            return seed.deserialize(block).map(Some);
        }
        self.r.pos += 1;
        let inline = Inline {
            text: after,
            depth: self.depth,
        };
        seed.deserialize(inline).map(Some)
    }
}

/// The entries of a block mapping; `rest`: what follows the colon of the key just read.
struct BlockMap<'r, 'a> {
    r: &'r mut Reader<'a>,
    indent: usize,
    depth: usize,
    rest: &'a str,
}

impl BlockMap<'_, '_> {
    fn at_end(&self) -> bool {
        self.r
            .lines
            .get(self.r.pos)
            .is_none_or(|line| line.indent < self.indent)
    }
}

impl<'de> de::MapAccess<'de> for BlockMap<'_, 'de> {
    type Error = Unfit;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unfit> {
        if self.at_end() {
            return Ok(None);
        }
        let line = self.r.lines[self.r.pos];
        if line.indent > self.indent || is_item(line.text) {
            return Err(Unfit);
        }
        let (key, rest) = key_end(line.text).ok_or(Unfit)?;
        self.rest = rest.trim_start_matches(' ');
        self.r.pos += 1;
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unfit> {
        let rest = self.rest;
        if !rest.is_empty() && !rest.starts_with('#') {
            return seed.deserialize(Inline {
                text: rest,
                depth: self.depth,
            });
        }
        let next = self.r.lines.get(self.r.pos).ok_or(Unfit)?;
        if next.indent > self.indent || (next.indent == self.indent && is_item(next.text)) {
            let indent = next.indent;
            seed.deserialize(Block {
                r: self.r,
                indent,
                depth: self.depth + 1,
            })
        } else {
            // An empty value: null, which the schemas spell many ways. Not ours.
            Err(Unfit)
        }
    }
}

/// A value written in the rest of a line: a scalar or a flow collection, then only a comment.
struct Inline<'a> {
    text: &'a str,
    depth: usize,
}

impl<'de> de::Deserializer<'de> for Inline<'de> {
    type Error = Unfit;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
        let text = self.text;
        if text.starts_with(['[', '{']) {
            let mut rest = text;
            let flow = Flow {
                rest: &mut rest,
                depth: self.depth + 1,
            };
            let value = flow.deserialize_any(visitor)?;
            return end_of_line(rest).then_some(value).ok_or(Unfit);
        }
        let (scalar, rest) = if text.starts_with(['"', '\'']) {
            let (value, rest) = quoted(text).ok_or(Unfit)?;
            (Scalar::Str(value), rest)
        } else {
            let end = text.find(" #").unwrap_or(text.len());
            let plain = text[..end].trim_end_matches(' ');
            if find_colon(plain).is_some() {
                return Err(Unfit);
            }
            (plain_scalar(plain).ok_or(Unfit)?, &text[end..])
        };
        if !end_of_line(rest) {
            return Err(Unfit);
        }
        scalar.visit(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unfit> {
        if !self.text.starts_with('{') {
            return Err(Unfit);
        }
        self.deserialize_any(visitor)
    }

    same_as_every_reader!();
}

/// A value inside a one-line flow collection (or the collection itself), read from `rest`,
/// which is left at what follows it.
struct Flow<'r, 'a> {
    rest: &'r mut &'a str,
    depth: usize,
}

impl<'de> de::Deserializer<'de> for Flow<'_, 'de> {
    type Error = Unfit;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unfit> {
        let text = *self.rest;
        if text.starts_with(['[', '{']) {
            if self.depth > MAX_DEPTH {
                return Err(Unfit);
            }
            let sequence = text.starts_with('[');
            *self.rest = text[1..].trim_start_matches(' ');
            let mut items = FlowItems {
                rest: self.rest,
                depth: self.depth,
                close: if sequence { ']' } else { '}' },
                first: true,
                done: false,
            };
            let value = if sequence {
                visitor.visit_seq(&mut items)?
            } else {
                visitor.visit_map(&mut items)?
            };
            return items.done.then_some(value).ok_or(Unfit);
        }
        let (scalar, after) = if text.starts_with(['"', '\'']) {
            let (value, after) = quoted(text).ok_or(Unfit)?;
            (Scalar::Str(value), after)
        } else {
            let end = text.find([',', ']', '}', '#']).unwrap_or(text.len());
            let plain = text[..end].trim_end_matches(' ');
            if plain.contains(':') {
                return Err(Unfit);
            }
            (plain_scalar(plain).ok_or(Unfit)?, &text[end..])
        };
        *self.rest = after;
        scalar.visit(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unfit> {
        if !self.rest.starts_with('{') {
            return Err(Unfit);
        }
        self.deserialize_any(visitor)
    }

    same_as_every_reader!();
}

/// The items (or entries) of a flow collection, after its opening bracket and spaces.
struct FlowItems<'r, 'a> {
    rest: &'r mut &'a str,
    depth: usize,
    close: char,
    first: bool,
    /// The closing bracket was read.
    done: bool,
}

impl FlowItems<'_, '_> {
    /// Step to the next item: `false` at the closing bracket, which is then read.
    fn advance(&mut self) -> Result<bool, Unfit> {
        if self.done {
            return Ok(false);
        }
        let rest = self.rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix(self.close) {
            *self.rest = after;
            self.done = true;
            return Ok(false);
        }
        if std::mem::take(&mut self.first) {
            return Ok(true);
        }
        let rest = rest.strip_prefix(',').ok_or(Unfit)?.trim_start_matches(' ');
        if rest.starts_with([']', '}', ',']) {
            return Err(Unfit);
        }
        *self.rest = rest;
        Ok(true)
    }
}

impl<'de> de::SeqAccess<'de> for FlowItems<'_, 'de> {
    type Error = Unfit;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unfit> {
        if !self.advance()? {
            return Ok(None);
        }
        let item = Flow {
            rest: self.rest,
            depth: self.depth + 1,
        };
        seed.deserialize(item).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for FlowItems<'_, 'de> {
    type Error = Unfit;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unfit> {
        if !self.advance()? {
            return Ok(None);
        }
        let rest = *self.rest;
        let (key, after) = if rest.starts_with(['"', '\'']) {
            quoted(rest).ok_or(Unfit)?
        } else {
            let end = rest.find(':').ok_or(Unfit)?;
            let key = plain_string(rest[..end].trim_end_matches(' ')).ok_or(Unfit)?;
            (Cow::Borrowed(key), &rest[end..])
        };
        *self.rest = after
            .strip_prefix(": ")
            .ok_or(Unfit)?
            .trim_start_matches(' ');
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Unfit> {
        seed.deserialize(Flow {
            rest: self.rest,
            depth: self.depth + 1,
        })
    }
}

/// A block sequence item: `-` then a space or the end of the line.
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key:` at the start of `text` (a mapping entry): the key and what follows the colon.
fn key_end(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let (key, rest) = if text.starts_with(['"', '\'']) {
        let (key, rest) = quoted(text)?;
        (key, rest.strip_prefix(':')?)
    } else {
        let colon = find_colon(text)?;
        (
            Cow::Borrowed(plain_string(&text[..colon])?),
            &text[colon + 1..],
        )
    };
    (rest.is_empty() || rest.starts_with(' ')).then_some((key, rest))
}

/// The first `:` followed by a space or the end: where a plain key ends.
fn find_colon(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| bytes[i] == b':' && matches!(bytes.get(i + 1), None | Some(b' ')))
}

/// Nothing but spaces and a comment.
fn end_of_line(rest: &str) -> bool {
    let trimmed = rest.trim_start_matches(' ');
    trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())
}

/// A single- or double-quoted scalar on one line (no escapes in double quotes), and what follows.
fn quoted(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let quote = text.as_bytes()[0];
    if quote == b'"' {
        let end = text[1..].find('"')? + 1;
        let inner = &text[1..end];
        if inner.contains('\\') || !inner.chars().all(printable) {
            return None;
        }
        return Some((Cow::Borrowed(inner), &text[end + 1..]));
    }
    // Borrowed unless a quote is written twice (`'it''s'`).
    let mut owned: Option<String> = None;
    let mut rest = &text[1..];
    loop {
        let end = rest.find('\'')?;
        let (piece, after) = (&rest[..end], &rest[end + 1..]);
        if let Some(after) = after.strip_prefix('\'') {
            let out = owned.get_or_insert_with(String::new);
            out.push_str(piece);
            out.push('\'');
            rest = after;
            continue;
        }
        let value = match owned {
            Some(mut out) => {
                out.push_str(piece);
                Cow::Owned(out)
            }
            None => Cow::Borrowed(piece),
        };
        return value.chars().all(printable).then_some((value, after));
    }
}

fn printable(c: char) -> bool {
    !c.is_control()
}

/// A plain scalar typed as serde-saphyr types it: a decimal integer, `true`/`false`, or a
/// string no schema reads as a number, null or time. `None` for the rest.
fn plain_scalar(text: &str) -> Option<Scalar<'_>> {
    match text {
        "true" => return Some(Scalar::Bool(true)),
        "false" => return Some(Scalar::Bool(false)),
        _ => {}
    }
    if let Some(n) = decimal(text) {
        return Some(Scalar::Int(n));
    }
    plain_string(text).map(|s| Scalar::Str(Cow::Borrowed(s)))
}

/// `0` or `-?[1-9][0-9]*` within i64.
fn decimal(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.starts_with('0') && text != "0")
    {
        return None;
    }
    text.parse::<i64>().ok()
}

/// A plain scalar that every YAML schema reads as this very string.
fn plain_string(text: &str) -> Option<&str> {
    let first = *text.as_bytes().first()?;
    // Indicators that start something else, and signs / dots / digits that may start a number;
    // a string starting with a digit is taken only in the shapes below.
    if b"-?:,[]{}#&*!|>'\"%@`+.~ ".contains(&first) || text.ends_with(' ') {
        return None;
    }
    // One pass: no control character, no comment (` #`), no mapping colon (`: ` or a final `:`).
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bad = b < 0x20
            || b == 0x7f
            || (b == b'#' && bytes[i - 1] == b' ')
            || (b == b':' && matches!(bytes.get(i + 1), None | Some(b' ')));
        if bad {
            return None;
        }
    }
    if !text.is_ascii() && !text.chars().all(printable) {
        return None;
    }
    if first.is_ascii_digit() && !digit_string(text) {
        return None;
    }
    // Null, and booleans in a case the JSON value would not keep. YAML 1.1's `yes`/`no`/`on`/
    // `off` are strings to serde-saphyr where a string is expected (`mode: off`); where a
    // boolean is expected the string fails to deserialize and serde-saphyr decides.
    if ["null", "true", "false", "nan", "inf"]
        .iter()
        .any(|word| text.eq_ignore_ascii_case(word))
    {
        return None;
    }
    Some(text)
}

/// A string starting with a digit that no schema reads as a number, time or date: a hex digest
/// with a letter other than `e`, `IP:port`, a duration, or an RFC 3339 timestamp (read as a
/// string into a string field by serde-saphyr, checked by the tests).
fn digit_string(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex_with_letter = bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes
            .iter()
            .any(|b| b.is_ascii_alphabetic() && !b"eE".contains(b));
    // YAML 1.1's binary integers: `0b1010`.
    let binary = (text.starts_with("0b") || text.starts_with("0B"))
        && bytes[2..].iter().all(|b| b"01_".contains(b));
    if hex_with_letter {
        // The usual case (a digest): decided without the other shapes.
        return !binary;
    }
    let timestamp = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && text.ends_with('Z')
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b"-:TZ.".contains(b));
    let address = bytes
        .iter()
        .all(|b| b.is_ascii_digit() || b".:".contains(b))
        && text.split(':').count() == 2
        && text
            .split(':')
            .next()
            .is_some_and(|ip| ip.split('.').count() == 4);
    // `2s`, `500ms`, `1h`: a letter no number has, and nothing a date or time has.
    let word = !bytes.iter().any(|b| b"-: ".contains(b))
        && bytes
            .iter()
            .any(|b| !b.is_ascii_hexdigit() && !b"xXoObB_.+".contains(b));
    timestamp || address || word
}

#[cfg(test)]
mod tests {
    //! Differential: every text compiles through the fast path to what serde-saphyr's parse
    //! compiles it to, or both fail (with serde-saphyr's errors, places included).

    use super::super::compile::{compile_raw, compile_with_env, parse, parse_fast, Secrets};
    use super::super::file::{without_spans, PolicyFile};
    use super::super::Policy;
    use super::read;
    use proptest::prelude::*;
    use serde_json::Value;

    fn env(name: &str) -> Option<String> {
        Some(format!("secret-of-{name}"))
    }

    /// Everything a compiled policy holds but its digest table (a hash map in random order, made
    /// from `keys`, which is compared).
    fn shown(p: &Policy) -> String {
        format!(
            "{} {} {} {:?} {:?} {:?} {} {:?} {:?} {:?} {:?}",
            p.digest,
            p.listen,
            p.admin_listen,
            p.upstream,
            p.client,
            p.shutdown,
            p.max_body_bytes,
            p.qb_token,
            p.rate_limit,
            p.dialog_rules,
            p.keys
        )
    }

    /// The production path (fast first) against serde-saphyr alone.
    fn same(text: &str) -> Result<(), String> {
        let slow =
            parse(text).and_then(|raw| compile_raw(raw, text.as_bytes(), &env, Secrets::Resolve));
        let both = compile_with_env(text, &env);
        match (&both, &slow) {
            (Ok(a), Ok(b)) if shown(a) == shown(b) => Ok(()),
            (Err(a), Err(b)) if a == b => Ok(()),
            _ => Err(format!(
                "differs for\n{text}\nfast path: {:?}\nserde-saphyr: {:?}",
                both.as_ref().map(shown),
                slow.as_ref().map(shown)
            )),
        }
    }

    /// Deterministic choices from a seed (proptest supplies the seeds).
    /// The state, and how rarely a tricky spelling is picked (1 in `.1`).
    struct Pick(u64, u64);

    impl Pick {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn one<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.below(of.len() as u64) as usize]
        }
        fn chance(&mut self, in_n: u64) -> bool {
            self.below(in_n) == 0
        }
    }

    /// Mostly good spellings, some tricky ones: other types, other schemas, other quoting.
    fn spell(p: &mut Pick, good: &[&str], tricky: &[&str]) -> String {
        let odds = p.1;
        let word = if p.chance(odds) {
            p.one(tricky)
        } else {
            p.one(good)
        };
        // Quoting a number, boolean or flow collection changes its type: a tricky spelling.
        let typed = word.parse::<i64>().is_ok()
            || ["true", "false"].contains(&word)
            || word.starts_with(['[', '{']);
        if typed && !p.chance(odds) {
            return word.to_string();
        }
        match p.below(8) {
            0 if !word.contains('\'') => format!("'{word}'"),
            1 if !word.contains('"') => format!("\"{word}\""),
            _ => word.to_string(),
        }
    }

    const TRICKY: &[&str] = &[
        "~",
        "null",
        "Null",
        "",
        "yes",
        "no",
        "on",
        "off",
        "Y",
        "n",
        "True",
        "FALSE",
        "1e3",
        "0x10",
        "0o7",
        "010",
        "+5",
        "-1",
        "0",
        ".inf",
        "-.Inf",
        ".nan",
        "1_000",
        "1.5",
        "2099-01-01",
        "12:30",
        "&a x",
        "*a",
        "!!str x",
        "|",
        ">",
        "a: b",
        "- x",
        "[x]",
        "{ a: b }",
        "x # c",
        "#x",
        "a#b",
        "it's",
        "18446744073709551616",
        "99999999999999999999",
    ];

    fn hex(p: &mut Pick) -> String {
        if !p.chance(p.1) {
            return (0..4).map(|_| format!("{:016x}", p.next())).collect();
        }
        match p.below(6) {
            0 => "1".repeat(64),
            1 => format!("1e{}", "5".repeat(62)),
            2 => format!("{}e5", "0".repeat(62)),
            3 => format!("0b{}", "01".repeat(31)),
            4 => format!("0bad{}", "0".repeat(60)),
            _ => (0..4).map(|_| format!("{:016x}", p.next())).collect(),
        }
    }

    /// A key's fields, as (name, value-text) where value-text is a flow/scalar, or a block
    /// sequence written as lines starting with `- `.
    fn key(p: &mut Pick, i: u64) -> Vec<(String, Vec<String>)> {
        let mut fields: Vec<(String, Vec<String>)> = Vec::new();
        let id = spell(p, &["k1", "billing-service", "a.b_c", "k00042"], TRICKY);
        fields.push((
            "id".into(),
            vec![if p.chance(3) { format!("{id}{i}") } else { id }],
        ));
        if p.chance(5) {
            let mut items = Vec::new();
            for _ in 0..p.below(3) + 1 {
                let sha = hex(p);
                let sha = spell(p, &[&sha], &[&sha, "zz"]);
                let after = spell(
                    p,
                    &[
                        "2099-01-01T00:00:00Z",
                        "2001-01-01T00:00:00Z",
                        "2099-12-31T23:59:59.5Z",
                    ],
                    TRICKY,
                );
                items.push(match p.below(3) {
                    0 => format!("{{ sha256: {sha}, not_after: {after} }}"),
                    1 => format!("{{sha256: {sha}}}"),
                    _ => format!("sha256: {sha}\n  not_after: {after}"),
                });
            }
            fields.push((
                "digests".into(),
                items.into_iter().map(|i| format!("- {i}")).collect(),
            ));
        } else {
            let sha = hex(p);
            fields.push(("sha256".into(), vec![spell(p, &[&sha], &[&sha])]));
        }
        if !p.chance(4) {
            let users = format!(
                "[{}]",
                (0..p.below(3) + 1)
                    .map(|n| (n * 7 + 1).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let v = spell(
                p,
                &["any", "none", &users, "[1,2]", "[ 5 ]"],
                &["[01]", "[0x10]", "[1, \"2\"]", "[]", "yes", "[1, -2]"],
            );
            if p.chance(4) {
                fields.push((
                    "on_behalf_of".into(),
                    vec!["- 3".into(), format!("- {}", spell(p, &["4"], TRICKY))],
                ));
            } else {
                fields.push(("on_behalf_of".into(), vec![v]));
            }
        }
        if p.chance(2) {
            let routes = [
                "GET /chat/Dialog.json",
                "POST /users/*/tokens",
                "PUT /chat/Dialog/*",
                "get /users.json",
            ];
            let n = p.below(3) as usize + 1;
            if p.chance(2) {
                let mut lines = Vec::new();
                for r in routes.iter().take(n) {
                    lines.push(format!("- {}", spell(p, &[r], &["GET", "GET /x: y", "/x"])));
                    if p.chance(4) {
                        lines.push("# between items".into());
                    }
                }
                fields.push(("routes".into(), lines));
            } else {
                let flow: Vec<String> = routes
                    .iter()
                    .take(n)
                    .map(|r| spell(p, &[r], &["/x"]))
                    .collect();
                fields.push(("routes".into(), vec![format!("[{}]", flow.join(", "))]));
            }
        }
        if p.chance(2) {
            let names = [
                "per_second",
                "burst",
                "per_minute",
                "per_hour",
                "per_day",
                "per_user_per_second",
            ];
            let mut pairs = Vec::new();
            for name in names {
                if p.chance(2) {
                    pairs.push((name, spell(p, &["5", "100", "1", "2000"], TRICKY)));
                }
            }
            if pairs.is_empty() {
                pairs.push(("per_second", "10".into()));
            }
            if p.chance(2) {
                let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                fields.push((
                    "rate_limit".into(),
                    vec![format!("{{ {} }}", inner.join(", "))],
                ));
            } else {
                fields.push((
                    "rate_limit".into(),
                    pairs.iter().map(|(k, v)| format!("  {k}: {v}")).collect(),
                ));
            }
        }
        if p.chance(3) {
            let v = spell(
                p,
                &[
                    "2099-01-01T00:00:00Z",
                    "2001-01-01T00:00:00Z",
                    "2099-01-01T00:00:00.25Z",
                ],
                TRICKY,
            );
            fields.push(("expires_at".into(), vec![v]));
        }
        if p.chance(3) {
            fields.push((
                "disabled".into(),
                vec![spell(p, &["true", "false"], TRICKY)],
            ));
        }
        if p.chance(3) {
            let v = spell(p, &["create_users", "mint_tokens", "manage_users"], TRICKY);
            let v = if p.chance(2) {
                format!("[{v}]")
            } else {
                format!("[{v}, mint_tokens]")
            };
            fields.push(("powers".into(), vec![v]));
        }
        if p.chance(6) {
            fields.push((
                "unchecked_routes".into(),
                vec![spell(p, &["[]", "[GET /x/y]"], &["[GET /x/y, ]"])],
            ));
        }
        if p.chance(p.1) {
            fields.push(("bogus".into(), vec!["1".into()]));
        }
        fields
    }

    /// Write `value-lines` of a field under `name` at `indent`.
    fn field(
        out: &mut String,
        p: &mut Pick,
        indent: &str,
        name: &str,
        value: &[String],
        step: &str,
    ) {
        let comment = if p.chance(6) { "   # a comment" } else { "" };
        if value.len() == 1 && !value[0].starts_with("- ") && !value[0].starts_with("  ") {
            out.push_str(&format!("{indent}{name}: {}{comment}\n", value[0]));
            return;
        }
        out.push_str(&format!("{indent}{name}:{comment}\n"));
        let inner = if value[0].starts_with("- ") && p.chance(2) {
            indent.to_string()
        } else {
            format!("{indent}{step}")
        };
        for line in value {
            let line = line.trim_start_matches("  ");
            let line = line.replace('\n', &format!("\n{inner}"));
            out.push_str(&format!("{inner}{line}\n"));
        }
    }

    fn policy(seed: u64) -> String {
        let p = &mut Pick(seed | 1, 0);
        // Many policies with no tricky spelling (the fast path's), the rest with a few.
        p.1 = [u64::MAX, 40, 10][p.below(3) as usize];
        let step = if p.chance(3) { "    " } else { "  " };
        let mut out = String::new();
        if p.chance(4) {
            out.push_str("---\n");
        }
        if p.chance(4) {
            out.push_str("# a policy\n\n");
        }
        out.push_str(&format!(
            "version: {}\n",
            spell(p, &["1"], &["01", "0x1", "1.0", "+1", "2", "true"])
        ));
        if p.chance(2) {
            out.push_str(&format!(
                "listen: {}\n",
                spell(
                    p,
                    &["127.0.0.1:8080", "0.0.0.0:0"],
                    &["12:30", "localhost:80"]
                )
            ));
        }
        if p.chance(2) {
            out.push_str(&format!(
                "upstream:\n{step}url: {}\n",
                spell(
                    p,
                    &["http://127.0.0.1:1", "https://api.quickblox.com/base"],
                    &["ftp://x"]
                )
            ));
            if p.chance(2) {
                out.push_str(&format!(
                    "{step}api_key: {}\n",
                    p.one(&[
                        "{ env: QB_API_KEY }",
                        "{env: X}",
                        "{ env: \"Y\" }",
                        "{ env: a, file: b }"
                    ])
                ));
            }
            if p.chance(2) {
                out.push_str(&format!(
                    "{step}timeout: {}\n",
                    spell(p, &["15s", "2m", "500ms"], TRICKY)
                ));
            }
        }
        if p.chance(3) {
            out.push_str(&format!(
                "max_body_bytes: {}\n",
                spell(p, &["1048576", "1"], TRICKY)
            ));
        }
        if p.chance(3) {
            out.push_str(&format!(
                "qb_token: {}\n",
                spell(p, &["forward", "reject"], TRICKY)
            ));
        }
        if p.chance(3) {
            out.push_str(&format!(
                "dialog_rules:\n{step}mode: {}\n{step}cache_ttl: {}\n{step}allow_fields: {}\n",
                spell(p, &["enforce", "report", "off"], TRICKY),
                spell(p, &["5s", "1h"], TRICKY),
                p.one(&["[]", "[name, photo]", "[ 'a' ]"]),
            ));
        }
        if p.chance(4) {
            out.push_str(&format!(
                "rate_limit: {{ store: {} }}\n",
                spell(p, &["memory"], TRICKY)
            ));
        }
        let count = p.below(4);
        out.push_str(if count == 0 { "keys: []\n" } else { "keys:\n" });
        let same_indent = p.chance(2);
        let item_indent = if same_indent {
            String::new()
        } else {
            step.to_string()
        };
        for i in 0..count {
            let fields = key(p, i);
            if p.chance(3) {
                // A flow mapping item, when every field is one line.
                if fields.iter().all(|(_, v)| {
                    v.len() == 1 && !v[0].contains('\n') && !v[0].starts_with(['-', ' '])
                }) {
                    let inner: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v[0]))
                        .collect();
                    out.push_str(&format!("{item_indent}- {{ {} }}\n", inner.join(", ")));
                    continue;
                }
            }
            let at = format!("{item_indent}  ");
            for (n, (name, value)) in fields.iter().enumerate() {
                if n == 0 {
                    let mut first = String::new();
                    field(&mut first, p, "", name, value, step);
                    // `- ` + the first field; its continuation lines already indented by `at`.
                    let first = first.replace('\n', &format!("\n{at}"));
                    out.push_str(&format!("{item_indent}- {}\n", first.trim_end()));
                } else {
                    field(&mut out, p, &at, name, value, step);
                }
            }
        }
        if p.chance(p.1) {
            out.push_str("version: 1\n");
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn generated_policies_compile_as_serde_saphyr_compiles_them(seed in any::<u64>()) {
            let text = policy(seed);
            if let Err(e) = same(&text) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Read straight into the structs, a policy is what serde_json makes of the same values
        /// held in a `Value` (the reader's contract: it visits values as serde_json does).
        #[test]
        fn the_structs_read_as_from_a_json_value(seed in any::<u64>()) {
            let text = policy(seed);
            if let Some(direct) = parse_fast(&text) {
                let Some(value) = read::<Value>(&text) else {
                    return Err(TestCaseError::fail(format!("read into the structs, not as a value:\n{text}")));
                };
                let via = without_spans(|| serde_json::from_value::<PolicyFile>(value));
                let via = via.map_err(|e| TestCaseError::fail(format!("{e} for\n{text}")))?;
                prop_assert_eq!(format!("{direct:?}"), format!("{via:?}"));
            }
        }
    }

    /// The generator must exercise the fast path, not only the fallback.
    #[test]
    fn most_generated_policies_take_the_fast_path() {
        let texts: Vec<String> = (1..500u64).map(|s| policy(s * 7919)).collect();
        let fast: Vec<_> = texts
            .iter()
            .filter_map(|t| Some((parse_fast(t)?, t)))
            .collect();
        assert!(
            fast.len() > 150,
            "only {} of 499 generated policies were read by the fast path",
            fast.len()
        );
        let good = fast
            .into_iter()
            .filter(|(raw, text)| {
                compile_raw(raw.clone(), text.as_bytes(), &env, Secrets::Resolve).is_ok()
            })
            .count();
        assert!(good > 50, "only {good} of the fast path's policies compile");
    }

    /// What the shipped examples and the README's policies are written in: read by the fast path,
    /// compiled to what serde-saphyr gives.
    #[test]
    fn shipped_and_readme_policies_take_the_fast_path_and_compile_the_same() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = Vec::new();
        for name in ["config/policy.example.yaml", "config/policy.minimal.yaml"] {
            texts.push((
                name.to_string(),
                std::fs::read_to_string(root.join(name)).unwrap(),
            ));
        }
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        for (n, block) in readme.split("```yaml\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap();
            if block.starts_with("version:") || block.contains("\nkeys:") {
                texts.push((format!("README yaml block {n}"), block.to_string()));
            }
        }
        assert!(texts.len() >= 3);
        for (name, text) in &texts {
            same(text).unwrap();
            if name.starts_with("config/") {
                assert!(
                    read::<Value>(text).is_some(),
                    "{name} not read by the fast path"
                );
                assert!(
                    parse_fast(text).is_some(),
                    "{name} not read by the fast path"
                );
            }
        }
    }

    /// The shape `bench/gen.py` writes (and most fleets): every key read by the fast path, digests
    /// starting with `0b`, `0e`, or digits included.
    #[test]
    fn a_generated_fleet_takes_the_fast_path() {
        let mut text = String::from("version: 1\nkeys:\n");
        for i in 0..3000 {
            let sha = super::super::digest_hex(format!("key-{i}").as_bytes());
            text.push_str(&format!(
                "  - id: k{i:05}\n    sha256: {sha}\n    on_behalf_of: any\n    rate_limit: {{ per_second: 10, burst: 20 }}\n"
            ));
        }
        assert!(parse_fast(&text).is_some());
        same(&text).unwrap();
    }

    #[test]
    fn outside_the_subset_is_not_handled() {
        for text in [
            "version: 1\nkeys: &k []\n",
            "version: 1\nkeys: *k\n",
            "version: !!int 1\n",
            "version: 1\nlisten: |\n  x\n",
            "version: 1\nlisten: >\n  x\n",
            "version: 1\nlisten: a\n  b\n",
            "version: 1\n\tlisten: a\n",
            "version: 1\nlisten:\n",
            "version: 1\nlisten: ~\n",
            "version: 1\nlisten: \"a\\nb\"\n",
            "version: 1\nlisten: 'a\n  b'\n",
            "version: 1\n---\nversion: 1\n",
            "version: 1\nkeys: [a,\n b]\n",
            "version: 1\n  listen: a\n",
            "version: 0x1\n",
            "version: 01\n",
            "version: 1e0\n",
            "? version\n: 1\n",
            "version: 1\nlisten: 12:30\n",
        ] {
            assert!(read::<Value>(text).is_none(), "read: {text:?}");
            assert!(parse_fast(text).is_none(), "read: {text:?}");
            same(text).unwrap();
        }
    }

    /// A key written twice is refused by the structs' visitors (a `Value` would keep the last).
    #[test]
    fn a_key_written_twice_is_not_handled() {
        for text in [
            "version: 1\nversion: 1\nkeys: []\n",
            "version: 1\nkeys: []\nversion: 1\n",
            "version: 1\nkeys: [{ id: a, id: b, sha256: x }]\n",
            "version: 1\nkeys:\n- id: a\n  id: b\n",
            "version: 1\nupstream: { url: a, 'url': b }\nkeys: []\n",
            "version: 1\nupstream:\n  api_key: { env: A, env: B }\nkeys: []\n",
            "version: 1\nkeys:\n- id: a\n  rate_limit: { per_second: 1, per_second: 2 }\n",
        ] {
            assert!(parse_fast(text).is_none(), "read: {text:?}");
            same(text).unwrap();
        }
    }

    /// What serde_json would take and YAML does not: a struct written as a sequence.
    #[test]
    fn a_struct_is_read_from_a_mapping_only() {
        for text in [
            "version: 1\nupstream: [http://127.0.0.1:1]\nkeys: []\n",
            "version: 1\nupstream:\n- http://127.0.0.1:1\nkeys: []\n",
            "version: 1\nkeys:\n- [a, 0a0a]\n",
            "version: 1\nkeys: [{ id: a, sha256: x, rate_limit: [1, 2] }]\n",
        ] {
            assert!(parse_fast(text).is_none(), "read: {text:?}");
            same(text).unwrap();
        }
    }

    #[test]
    fn the_subset_reads_as_json_would() {
        let text = "---\n# c\nversion: 1 # one\nlisten: '127.0.0.1:80'\nkeys:\n- id: \"a b\"\n  sha256: 0a\n  on_behalf_of: [1, 22]\n  powers:\n  - mint_tokens\n  rate_limit: { per_second: 5, burst: -1 }\n  disabled: false\n  expires_at: 2099-01-01T00:00:00Z\n  routes: ['it''s', GET /a]\n";
        let value = read::<Value>(text).unwrap();
        let expected = serde_json::json!({
            "version": 1, "listen": "127.0.0.1:80",
            "keys": [{"id": "a b", "sha256": "0a", "on_behalf_of": [1, 22], "powers": ["mint_tokens"],
                      "rate_limit": {"per_second": 5, "burst": -1}, "disabled": false,
                      "expires_at": "2099-01-01T00:00:00Z", "routes": ["it's", "GET /a"]}]
        });
        assert_eq!(value, expected);
    }
}
