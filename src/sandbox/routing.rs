//! Which handler a request path reaches: QuickBlox's Rails routes, matched the way QuickBlox
//! matches them.
//!
//! - Journey first normalizes the path: runs of `/` become one, a trailing `/` goes.
//! - The fixed words (`session`, `chat`, `Dialog`, `Message`, `unread`, `notifications`, `users`, `external`, `tokens`, `events`, `subscriptions`, `blobs`, `complete`, `address_book`, `registered_users`) match in any letter case, folded as Unicode
//!   folds case: besides ASCII, `ı` (U+0131) and `İ` (U+0130) fold to `i`, `ſ` (U+017F) to `s` and
//!   the Kelvin sign (U+212A) to `k` ([`fold`]). No other character folds to an ASCII letter, and
//!   the words are ASCII, so the table stops there (`Å` U+212B folds to `å`: never a match).
//! - A fixed word is matched as it stands in the path: an ASCII character written as `%XX` is not
//!   that character (`/chat/%44ialog` is no route), while a non-ASCII character can only be sent
//!   percent-encoded, so `%C4%B1` *is* `ı` and `/chat/d%C4%B1alog/<id>.json` is the dialog route.
//! - The last segment may carry any extension (`(.:format)`: `.json`, `.xml`, ...); the id and the
//!   extension are `[^/.]+` as Rails' default segment constraint has them.
//! - The id segments alone are percent-decoded, as Journey decodes path parameters (`%XX` only: a
//!   stray `%` or a `+` stays as it is); an id that is then not UTF-8 is Rails' 400 "Invalid path
//!   parameters".

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Session,
    Dialogs,
    /// One id or a comma-separated list, percent-decoded.
    Dialog(String),
    /// `/users`.
    Users,
    /// `/users/<id>`, the id percent-decoded.
    User(String),
    /// `/users/<id>/tokens`, the id percent-decoded.
    UserTokens(String),
    /// `/users/external/<id>`, the id percent-decoded.
    UserExternal(String),
    /// `/chat/Message`.
    Messages,
    /// `/chat/Message/unread`.
    MessagesUnread,
    /// `/chat/Message/<ids>`, percent-decoded.
    Message(String),
    /// `/chat/Dialog/<id>/notifications`, the id percent-decoded.
    DialogNotifications(String),
    /// `/events`.
    Events,
    /// `/events/<id>`, percent-decoded.
    Event(String),
    /// `/subscriptions`.
    Subscriptions,
    /// `/subscriptions/<id>`, percent-decoded.
    Subscription(String),
    /// `/blobs`.
    Blobs,
    /// `/blobs/<id>`, the id percent-decoded.
    Blob(String),
    /// `/blobs/<id>/complete`, the id percent-decoded.
    BlobComplete(String),
    /// `/address_book`.
    AddressBook,
    /// `/address_book/registered_users`.
    AddressBookRegistered,
    /// Routed, but Rails refuses its path parameters: the 400's message.
    BadPath(String),
    Unknown,
}

/// A route and the path parameters Rails merges into `params` (`id` is in [`Route::Dialog`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Routed {
    pub route: Route,
    /// The extension, without its dot.
    pub format: Option<String>,
}

pub(super) fn route(path: &str) -> Routed {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let unknown = Routed {
        route: Route::Unknown,
        format: None,
    };
    let (route, last) = match segments.as_slice() {
        [last] => (Route::Session, *last),
        [chat, last] if is_word(chat, "chat") => (Route::Dialogs, *last),
        [users, last] if is_word(users, "users") => (Route::User(String::new()), *last),
        [events, last] if is_word(events, "events") => (Route::Event(String::new()), *last),
        [subscriptions, last] if is_word(subscriptions, "subscriptions") => {
            (Route::Subscription(String::new()), *last)
        }
        [blobs, last] if is_word(blobs, "blobs") => (Route::Blob(String::new()), *last),
        [book, last] if is_word(book, "address_book") => (Route::AddressBookRegistered, *last),
        [blobs, id, last] if is_word(blobs, "blobs") && !id.contains('.') => match parameter(id) {
            Ok(id) => (Route::BlobComplete(id), *last),
            Err(route) => (route, *last),
        },
        [chat, dialog, last] if is_word(chat, "chat") && is_word(dialog, "dialog") => {
            (Route::Dialog(String::new()), *last)
        }
        [chat, message, last] if is_word(chat, "chat") && is_word(message, "message") => {
            (Route::Message(String::new()), *last)
        }
        [chat, dialog, id, last]
            if is_word(chat, "chat") && is_word(dialog, "dialog") && !id.contains('.') =>
        {
            match parameter(id) {
                Ok(id) => (Route::DialogNotifications(id), *last),
                Err(route) => (route, *last),
            }
        }
        [users, external, last] if is_word(users, "users") && is_word(external, "external") => {
            (Route::UserExternal(String::new()), *last)
        }
        // A segment before the last takes no extension: `[^/.]+`.
        [users, id, last] if is_word(users, "users") && !id.contains('.') => match parameter(id) {
            Ok(id) => (Route::UserTokens(id), *last),
            Err(route) => (route, *last),
        },
        _ => return unknown,
    };
    let Some((stem, format)) = split_format(last) else {
        return unknown;
    };
    let route = match route {
        Route::Session if is_word(stem, "session") => Route::Session,
        Route::Session if is_word(stem, "users") => Route::Users,
        Route::Session if is_word(stem, "events") => Route::Events,
        Route::Session if is_word(stem, "subscriptions") => Route::Subscriptions,
        Route::Event(_) => parameter(stem).map_or_else(|e| e, Route::Event),
        Route::Subscription(_) => parameter(stem).map_or_else(|e| e, Route::Subscription),
        Route::Session if is_word(stem, "blobs") => Route::Blobs,
        Route::Session if is_word(stem, "address_book") => Route::AddressBook,
        Route::AddressBookRegistered if is_word(stem, "registered_users") => {
            Route::AddressBookRegistered
        }
        Route::Blob(_) => parameter(stem).map_or_else(|e| e, Route::Blob),
        Route::BlobComplete(id) if is_word(stem, "complete") => Route::BlobComplete(id),
        Route::Dialogs if is_word(stem, "dialog") => Route::Dialogs,
        Route::Dialogs if is_word(stem, "message") => Route::Messages,
        Route::Message(_) if is_word(stem, "unread") => Route::MessagesUnread,
        Route::Message(_) => parameter(stem).map_or_else(|e| e, Route::Message),
        Route::DialogNotifications(id) if is_word(stem, "notifications") => {
            Route::DialogNotifications(id)
        }
        Route::Dialog(_) => parameter(stem).map_or_else(|e| e, Route::Dialog),
        Route::User(_) => parameter(stem).map_or_else(|e| e, Route::User),
        Route::UserExternal(_) => parameter(stem).map_or_else(|e| e, Route::UserExternal),
        route @ Route::BadPath(_)
            if is_word(stem, "tokens")
                || is_word(stem, "notifications")
                || is_word(stem, "complete") =>
        {
            route
        }
        Route::UserTokens(id) if is_word(stem, "tokens") => Route::UserTokens(id),
        _ => return unknown,
    };
    Routed {
        route,
        format: format.map(|f| String::from_utf8_lossy(&unescape_uri(f)).into_owned()),
    }
}

/// A path parameter as Journey decodes it; not UTF-8 once decoded: Rails' 400.
fn parameter(raw: &str) -> Result<String, Route> {
    String::from_utf8(unescape_uri(raw)).map_err(|e| {
        Route::BadPath(format!(
            "Invalid path parameters: Invalid encoding for parameter: {}",
            String::from_utf8_lossy(e.as_bytes())
        ))
    })
}

/// `stem(.format)?`, both `[^/.]+`; `None` when the segment fits neither.
fn split_format(segment: &str) -> Option<(&str, Option<&str>)> {
    let (stem, format) = match segment.split_once('.') {
        None => (segment, None),
        Some((stem, format)) => (stem, Some(format)),
    };
    let fits = |s: &str| !s.is_empty() && !s.contains('.');
    (fits(stem) && format.is_none_or(fits)).then_some((stem, format))
}

/// Whether a raw path segment is `word` (lowercase ASCII) under QuickBlox's case folding.
fn is_word(raw: &str, word: &str) -> bool {
    let Ok(text) = String::from_utf8(decode_non_ascii(raw)) else {
        return false;
    };
    let mut chars = text.chars().map(fold);
    word.chars().all(|w| chars.next() == Some(w)) && chars.next().is_none()
}

/// The case fold of one character, as far as it matters for ASCII words.
pub(super) fn fold(c: char) -> char {
    match c {
        '\u{0130}' | '\u{0131}' => 'i',
        '\u{017F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// Decodes the escapes of non-ASCII bytes (`%80`..`%FF`), the only way to send such a character;
/// an escaped ASCII character stays escaped.
fn decode_non_ascii(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escaped(bytes, i) {
            Some(b) if b >= 0x80 => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Journey's `unescape_uri`: every `%XX` becomes its byte; anything else stays.
fn unescape_uri(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match escaped(bytes, i) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The byte `%XX` at `i` stands for, if there is one.
pub(super) fn escaped(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
    let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
    u8::try_from(hi * 16 + lo).ok()
}
