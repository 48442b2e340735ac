//! The endpoint catalog: every QuickBlox endpoint qbgate knows, with the rule that judges it. The
//! whole permission model of an API-key request in one place.
//!
//! An API-key request whose method and route key match no row is refused, 403 `route_unknown`,
//! unless the key lists it in `unchecked_routes` (forwarded unjudged, logged and counted).
//! `QB-Token` requests carry the user's own session and are not subject to the catalog.
//!
//! Paths are route keys (decoded, lowercased, `.json` removed); `{id}`, `{ids}` (comma-separated)
//! and `{ext}` match one segment, which the row's rule reads. A last segment is read as Rails
//! reads it: `tokens.xml` is `tokens` with the format `xml`. `HEAD` matches a `GET` row and
//! `PATCH` a `PUT` row (Rails routes them so); `OPTIONS` matches none.
//!
//! [`CATALOG`] is the table, for the documentation, `qbgate check` and the tests; [`find`] is
//! the same table as one `match` on the route key's segments (the first, then the shape), so a
//! request costs no scan. A test holds the two in agreement.

use http::Method;

use super::Rejection;
use crate::policy::stem;
use crate::policy::{Key, OnBehalfOf, Power, RoutePattern, Segment};
use crate::request::CanonicalPath;

/// The rule a catalog row is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing to judge beyond the acting user: forwarded.
    Pass,
    /// The dialog rules ([`super::dialog`]; `dialog_rules.mode` applies).
    Dialogs,
    /// The users rules and the key's powers ([`super::users`]; always enforced).
    Users,
    /// The chat-message and notification-setting rules ([`super::messages`]; always enforced).
    Messages,
    /// The push rules ([`super::push`]; always enforced).
    Push,
    /// Blob ownership ([`super::blobs`]; always enforced).
    Blobs,
    /// Known, and refused with an API key: 403 `route_unknown` (a session is made by signature or
    /// carried in `QB-Token`, never through a scoped key). `unchecked_routes` does not reopen it.
    Refused,
}

impl Rule {
    /// How `qbgate check` and the documentation name it.
    pub fn word(self) -> &'static str {
        match self {
            Rule::Pass => "pass",
            Rule::Dialogs => "dialog rules",
            Rule::Users => "users rules",
            Rule::Messages => "message rules",
            Rule::Push => "push rules",
            Rule::Blobs => "blob rules",
            Rule::Refused => "refused",
        }
    }
}

/// The families `qbgate check` reports a key's reach by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sessions,
    Users,
    Dialogs,
    Messages,
    Push,
    Blobs,
    AddressBook,
}

impl Family {
    /// Every family, in the order `qbgate check` lists them.
    pub const ALL: [Family; 7] = [
        Family::Sessions,
        Family::Users,
        Family::Dialogs,
        Family::Messages,
        Family::Push,
        Family::Blobs,
        Family::AddressBook,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Family::Sessions => "sessions",
            Family::Users => "users",
            Family::Dialogs => "dialogs",
            Family::Messages => "messages",
            Family::Push => "push",
            Family::Blobs => "blobs",
            Family::AddressBook => "address book",
        }
    }
}

/// One catalog row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The route key's pattern.
    pub path: &'static str,
    pub family: Family,
    pub rule: Rule,
    /// A write that needs a user: a key with `on_behalf_of: none` gets 403 `need_user`.
    pub needs_user: bool,
    /// What the rule looks up through the upstream (decided; built with the rule).
    pub lookups: &'static str,
}

const fn row(
    method: &'static str,
    path: &'static str,
    family: Family,
    rule: Rule,
    needs_user: bool,
    lookups: &'static str,
) -> Entry {
    Entry {
        method,
        path,
        family,
        rule,
        needs_user,
        lookups,
    }
}

use Family as F;
use Rule as R;

// Sessions: refused with an API key.
const SESSION_POST: Entry = row("POST", "/session", F::Sessions, R::Refused, false, "");
const SESSION_GET: Entry = row("GET", "/session", F::Sessions, R::Refused, false, "");
const SESSION_DELETE: Entry = row("DELETE", "/session", F::Sessions, R::Refused, false, "");
const LOGIN_POST: Entry = row("POST", "/login", F::Sessions, R::Refused, false, "");
const LOGIN_DELETE: Entry = row("DELETE", "/login", F::Sessions, R::Refused, false, "");
// Users and tokens.
const USER_TOKENS: Entry = row("POST", "/users/{id}/tokens", F::Users, R::Users, false, "");
const USERS_LIST: Entry = row("GET", "/users", F::Users, R::Pass, false, "");
const USERS_CREATE: Entry = row("POST", "/users", F::Users, R::Users, false, "");
const USER_GET: Entry = row("GET", "/users/{id}", F::Users, R::Pass, false, "");
const USER_PUT: Entry = row("PUT", "/users/{id}", F::Users, R::Users, false, "");
const USER_DELETE: Entry = row("DELETE", "/users/{id}", F::Users, R::Users, false, "");
const BY_LOGIN: Entry = row("GET", "/users/by_login", F::Users, R::Pass, false, "");
const BY_EMAIL: Entry = row("GET", "/users/by_email", F::Users, R::Pass, false, "");
const BY_FULL_NAME: Entry = row("GET", "/users/by_full_name", F::Users, R::Pass, false, "");
const BY_TAGS: Entry = row("GET", "/users/by_tags", F::Users, R::Pass, false, "");
const BY_FACEBOOK: Entry = row("GET", "/users/by_facebook_id", F::Users, R::Pass, false, "");
const BY_TWITTER: Entry = row("GET", "/users/by_twitter_id", F::Users, R::Pass, false, "");
const EXTERNAL_GET: Entry = row("GET", "/users/external/{ext}", F::Users, R::Pass, false, "");
const EXTERNAL_DELETE: Entry = row(
    "DELETE",
    "/users/external/{ext}",
    F::Users,
    R::Users,
    false,
    "",
);
const PASSWORD_RESET: Entry = row("GET", "/users/password/reset", F::Users, R::Pass, false, "");
// Dialogs.
const DIALOGS_LIST: Entry = row("GET", "/chat/dialog", F::Dialogs, R::Pass, false, "");
const DIALOG_CREATE: Entry = row("POST", "/chat/dialog", F::Dialogs, R::Dialogs, false, "");
const DIALOG_UPDATE: Entry = row(
    "PUT",
    "/chat/dialog/{id}",
    F::Dialogs,
    R::Dialogs,
    false,
    "dialog",
);
const DIALOG_DELETE: Entry = row(
    "DELETE",
    "/chat/dialog/{ids}",
    F::Dialogs,
    R::Dialogs,
    false,
    "dialogs (force)",
);
// Dialog notifications and messages.
const NOTIFICATIONS_GET: Entry = row(
    "GET",
    "/chat/dialog/{id}/notifications",
    F::Messages,
    R::Messages,
    false,
    "dialog",
);
const NOTIFICATIONS_PUT: Entry = row(
    "PUT",
    "/chat/dialog/{id}/notifications",
    F::Messages,
    R::Messages,
    true,
    "dialog",
);
const MESSAGES_LIST: Entry = row(
    "GET",
    "/chat/message",
    F::Messages,
    R::Messages,
    false,
    "dialog",
);
const MESSAGE_CREATE: Entry = row(
    "POST",
    "/chat/message",
    F::Messages,
    R::Messages,
    true,
    "dialog",
);
const MESSAGE_UPDATE: Entry = row(
    "PUT",
    "/chat/message/{ids}",
    F::Messages,
    R::Messages,
    true,
    "dialog, message",
);
const MESSAGE_DELETE: Entry = row(
    "DELETE",
    "/chat/message/{ids}",
    F::Messages,
    R::Messages,
    true,
    "dialog, messages (force)",
);
const MESSAGES_UNREAD: Entry = row(
    "GET",
    "/chat/message/unread",
    F::Messages,
    R::Pass,
    false,
    "",
);
// Push.
const EVENTS_LIST: Entry = row("GET", "/events", F::Push, R::Pass, false, "");
const EVENT_CREATE: Entry = row("POST", "/events", F::Push, R::Push, true, "");
const EVENT_GET: Entry = row("GET", "/events/{id}", F::Push, R::Push, false, "event");
const EVENT_PUT: Entry = row("PUT", "/events/{id}", F::Push, R::Push, true, "event");
const EVENT_DELETE: Entry = row("DELETE", "/events/{id}", F::Push, R::Push, true, "event");
const SUBSCRIPTIONS_LIST: Entry = row("GET", "/subscriptions", F::Push, R::Pass, false, "");
const SUBSCRIPTION_CREATE: Entry = row("POST", "/subscriptions", F::Push, R::Pass, true, "");
const SUBSCRIPTION_DELETE: Entry = row(
    "DELETE",
    "/subscriptions/{id}",
    F::Push,
    R::Push,
    true,
    "subscriptions",
);
// Blobs.
const BLOBS_LIST: Entry = row("GET", "/blobs", F::Blobs, R::Pass, false, "");
const BLOB_CREATE: Entry = row("POST", "/blobs", F::Blobs, R::Pass, true, "");
const BLOB_GET: Entry = row("GET", "/blobs/{id}", F::Blobs, R::Pass, false, "");
const BLOB_PUT: Entry = row("PUT", "/blobs/{id}", F::Blobs, R::Blobs, true, "blobs");
const BLOB_DELETE: Entry = row("DELETE", "/blobs/{id}", F::Blobs, R::Blobs, true, "blobs");
const BLOB_COMPLETE: Entry = row(
    "PUT",
    "/blobs/{id}/complete",
    F::Blobs,
    R::Blobs,
    true,
    "blobs",
);
const BLOB_UPLOAD: Entry = row("POST", "/blobs/{id}/upload", F::Blobs, R::Pass, true, "");
const BLOB_DOWNLOAD: Entry = row("GET", "/blobs/{id}/download", F::Blobs, R::Pass, false, "");
// Address book.
const BOOK_GET: Entry = row("GET", "/address_book", F::AddressBook, R::Pass, false, "");
const BOOK_POST: Entry = row("POST", "/address_book", F::AddressBook, R::Pass, true, "");
const BOOK_REGISTERED: Entry = row(
    "GET",
    "/address_book/registered_users",
    F::AddressBook,
    R::Pass,
    false,
    "",
);

/// Every endpoint qbgate knows. Custom objects (`/data`, `/class`) are not in it: refused.
pub const CATALOG: &[Entry] = &[
    SESSION_POST,
    SESSION_GET,
    SESSION_DELETE,
    LOGIN_POST,
    LOGIN_DELETE,
    USER_TOKENS,
    USERS_LIST,
    USERS_CREATE,
    USER_GET,
    USER_PUT,
    USER_DELETE,
    BY_LOGIN,
    BY_EMAIL,
    BY_FULL_NAME,
    BY_TAGS,
    BY_FACEBOOK,
    BY_TWITTER,
    EXTERNAL_GET,
    EXTERNAL_DELETE,
    PASSWORD_RESET,
    DIALOGS_LIST,
    DIALOG_CREATE,
    DIALOG_UPDATE,
    DIALOG_DELETE,
    NOTIFICATIONS_GET,
    NOTIFICATIONS_PUT,
    MESSAGES_LIST,
    MESSAGE_CREATE,
    MESSAGE_UPDATE,
    MESSAGE_DELETE,
    MESSAGES_UNREAD,
    EVENTS_LIST,
    EVENT_CREATE,
    EVENT_GET,
    EVENT_PUT,
    EVENT_DELETE,
    SUBSCRIPTIONS_LIST,
    SUBSCRIPTION_CREATE,
    SUBSCRIPTION_DELETE,
    BLOBS_LIST,
    BLOB_CREATE,
    BLOB_GET,
    BLOB_PUT,
    BLOB_DELETE,
    BLOB_COMPLETE,
    BLOB_UPLOAD,
    BLOB_DOWNLOAD,
    BOOK_GET,
    BOOK_POST,
    BOOK_REGISTERED,
];

/// The catalog row of a request: one `match` on its route key. `None`: outside the catalog.
pub fn find(method: &Method, path: &CanonicalPath) -> Option<&'static Entry> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum M {
        Get,
        Post,
        Put,
        Delete,
    }
    use M::{Delete, Get, Post, Put};
    let m = match *method {
        Method::GET | Method::HEAD => Get,
        Method::POST => Post,
        Method::PUT | Method::PATCH => Put,
        Method::DELETE => Delete,
        _ => return None,
    };
    let n = path.len();
    // A segment as a word: the last one without its format extension, as Rails reads it.
    let word = |i: usize| {
        let segment = path.route_segment(i)?;
        Some(if i + 1 == n { stem(segment) } else { segment })
    };
    let entry = match word(0)? {
        "session" => match (n, m) {
            (1, Post) => &SESSION_POST,
            (1, Get) => &SESSION_GET,
            (1, Delete) => &SESSION_DELETE,
            _ => return None,
        },
        "login" => match (n, m) {
            (1, Post) => &LOGIN_POST,
            (1, Delete) => &LOGIN_DELETE,
            _ => return None,
        },
        "users" => match (n, m) {
            (1, Get) => &USERS_LIST,
            (1, Post) => &USERS_CREATE,
            (2, _) => match (m, word(1)?) {
                (Get, "by_login") => &BY_LOGIN,
                (Get, "by_email") => &BY_EMAIL,
                (Get, "by_full_name") => &BY_FULL_NAME,
                (Get, "by_tags") => &BY_TAGS,
                (Get, "by_facebook_id") => &BY_FACEBOOK,
                (Get, "by_twitter_id") => &BY_TWITTER,
                (Get, _) => &USER_GET,
                (Put, _) => &USER_PUT,
                (Delete, _) => &USER_DELETE,
                _ => return None,
            },
            (3, _) => match (m, word(1)?, word(2)?) {
                (Post, _, "tokens") => &USER_TOKENS,
                (Get, "external", _) => &EXTERNAL_GET,
                (Delete, "external", _) => &EXTERNAL_DELETE,
                (Get, "password", "reset") => &PASSWORD_RESET,
                _ => return None,
            },
            _ => return None,
        },
        "chat" => match (n, m, word(1)?) {
            (2, Get, "dialog") => &DIALOGS_LIST,
            (2, Post, "dialog") => &DIALOG_CREATE,
            (3, Put, "dialog") => &DIALOG_UPDATE,
            (3, Delete, "dialog") => &DIALOG_DELETE,
            (4, Get, "dialog") if word(3) == Some("notifications") => &NOTIFICATIONS_GET,
            (4, Put, "dialog") if word(3) == Some("notifications") => &NOTIFICATIONS_PUT,
            (2, Get, "message") => &MESSAGES_LIST,
            (2, Post, "message") => &MESSAGE_CREATE,
            (3, Get, "message") if word(2) == Some("unread") => &MESSAGES_UNREAD,
            (3, Put, "message") => &MESSAGE_UPDATE,
            (3, Delete, "message") => &MESSAGE_DELETE,
            _ => return None,
        },
        "events" => match (n, m) {
            (1, Get) => &EVENTS_LIST,
            (1, Post) => &EVENT_CREATE,
            (2, Get) => &EVENT_GET,
            (2, Put) => &EVENT_PUT,
            (2, Delete) => &EVENT_DELETE,
            _ => return None,
        },
        "subscriptions" => match (n, m) {
            (1, Get) => &SUBSCRIPTIONS_LIST,
            (1, Post) => &SUBSCRIPTION_CREATE,
            (2, Delete) => &SUBSCRIPTION_DELETE,
            _ => return None,
        },
        "blobs" => match (n, m, word(2)) {
            (1, Get, _) => &BLOBS_LIST,
            (1, Post, _) => &BLOB_CREATE,
            (2, Get, _) => &BLOB_GET,
            (2, Put, _) => &BLOB_PUT,
            (2, Delete, _) => &BLOB_DELETE,
            (3, Put, Some("complete")) => &BLOB_COMPLETE,
            (3, Post, Some("upload")) => &BLOB_UPLOAD,
            (3, Get, Some("download")) => &BLOB_DOWNLOAD,
            _ => return None,
        },
        "address_book" => match (n, m, word(1)) {
            (1, Get, _) => &BOOK_GET,
            (1, Post, _) => &BOOK_POST,
            (2, Get, Some("registered_users")) => &BOOK_REGISTERED,
            _ => return None,
        },
        _ => return None,
    };
    Some(entry)
}

/// 403 `route_unknown`: outside the catalog (and not in the key's `unchecked_routes`), or a
/// catalog row refused with an API key.
pub fn route_unknown() -> Rejection {
    Rejection::forbidden(
        "route_unknown",
        "qbgate does not know this QuickBlox endpoint, or refuses it with an API key",
    )
}

/// 403 `need_user`: a write that needs a user, on a key that acts as the application.
pub fn need_user() -> Rejection {
    Rejection::forbidden(
        "need_user",
        "Forbidden. Need user: this key acts as the application (on_behalf_of: none)",
    )
}

/// Can `key` use this row at all (its `routes`, its acting user, its powers)? `Err(power)`: only
/// with a power it lacks.
fn reaches(key: &Key, entry: &Entry) -> Result<bool, Power> {
    if entry.rule == Rule::Refused {
        return Ok(false);
    }
    if let Some(routes) = &key.routes {
        if !routes.iter().any(|r| covers(r, entry)) {
            return Ok(false);
        }
    }
    let app = key.on_behalf_of == OnBehalfOf::None;
    if entry.needs_user && app {
        return Ok(false);
    }
    let power = match (entry.method, entry.path) {
        ("POST", "/users") => Some(Power::CreateUsers),
        ("POST", "/users/{id}/tokens") => Some(Power::MintTokens),
        ("PUT" | "DELETE", "/users/{id}") if app => Some(Power::ManageUsers),
        ("DELETE", "/users/external/{ext}") => Some(Power::ManageUsers),
        _ => None,
    };
    match power {
        Some(power) if !key.powers.contains(power) => Err(power),
        _ => Ok(true),
    }
}

/// Does a `routes` entry let some request of this row through?
fn covers(route: &RoutePattern, entry: &Entry) -> bool {
    if route
        .method
        .as_ref()
        .is_some_and(|m| m.as_str() != entry.method)
    {
        return false;
    }
    let parts: Vec<&str> = entry.path.split('/').skip(1).collect();
    route.segments.len() == parts.len()
        && route
            .segments
            .iter()
            .zip(parts)
            .all(|(segment, part)| match segment {
                Segment::Any => true,
                Segment::Literal(literal) => part.starts_with('{') || literal == part,
            })
}

/// A catalog row that a `routes`-syntax pattern also names, if any: an `unchecked_routes` entry
/// has no effect there (the row's own rule judges it), which `qbgate check` warns about.
pub fn covered_row(route: &RoutePattern) -> Option<&'static Entry> {
    CATALOG.iter().find(|entry| covers(route, entry))
}

/// One line for `qbgate check`: the families of endpoints `key` reaches, those refused to it,
/// the powers it would need for the rest, and how many `unchecked_routes` it lists.
pub fn reach(key: &Key) -> String {
    let mut reached = Vec::new();
    let mut refused = Vec::new();
    let mut needs: Vec<&str> = Vec::new();
    for family in Family::ALL {
        let rows: Vec<&Entry> = CATALOG.iter().filter(|e| e.family == family).collect();
        let mut got: Vec<&Entry> = Vec::new();
        for entry in &rows {
            match reaches(key, entry) {
                Ok(true) => got.push(entry),
                Ok(false) => {}
                Err(power) if !needs.contains(&power.word()) => needs.push(power.word()),
                Err(_) => {}
            }
        }
        if got.is_empty() {
            refused.push(family.word().to_owned());
            continue;
        }
        let mut notes = Vec::new();
        if got.len() < rows.len() {
            notes.push(if got.iter().all(|e| e.method == "GET") {
                "read"
            } else {
                "partly"
            });
        }
        reached.push(if notes.is_empty() {
            family.word().to_owned()
        } else {
            format!("{} ({})", family.word(), notes.join(", "))
        });
    }
    refused.push("custom objects".to_owned());
    let mut line = if reached.is_empty() {
        "nothing in the catalog".to_owned()
    } else {
        reached.join(", ")
    };
    line.push_str("; refused: ");
    line.push_str(&refused.join(", "));
    if !needs.is_empty() {
        line.push_str("; needs powers: ");
        line.push_str(&needs.join(", "));
    }
    if !key.unchecked_routes.is_empty() {
        line.push_str(&format!(
            "; unchecked: {} route(s) outside the catalog, forwarded unjudged",
            key.unchecked_routes.len()
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> CanonicalPath {
        let raw = http::uri::PathAndQuery::try_from(text).unwrap();
        CanonicalPath::parse(&raw).unwrap()
    }

    /// A request path for a row: each placeholder filled, in a spelling of the caller's choice.
    fn sample(entry: &Entry, fill: &dyn Fn(&str) -> String, suffix: &str) -> String {
        let filled: Vec<String> = entry
            .path
            .split('/')
            .skip(1)
            .map(|s| {
                if s.starts_with('{') {
                    fill(s)
                } else {
                    s.to_owned()
                }
            })
            .collect();
        format!("/{}{suffix}", filled.join("/"))
    }

    #[test]
    fn the_match_and_the_table_agree_on_every_row() {
        let fill = |s: &str| match s {
            "{ids}" => "5d75a,5d75b".to_owned(),
            "{ext}" => "ext-9".to_owned(),
            _ => "5d75".to_owned(),
        };
        for entry in CATALOG {
            let method = Method::from_bytes(entry.method.as_bytes()).unwrap();
            for suffix in ["", ".json"] {
                let text = sample(entry, &fill, suffix);
                assert_eq!(find(&method, &path(&text)), Some(entry), "{method} {text}");
                let upper = text.to_ascii_uppercase().replace(".JSON", ".json");
                assert_eq!(
                    find(&method, &path(&upper)),
                    Some(entry),
                    "{method} {upper}"
                );
            }
            let also = match entry.method {
                "GET" => Some(Method::HEAD),
                "PUT" => Some(Method::PATCH),
                _ => None,
            };
            if let Some(also) = also {
                let text = sample(entry, &fill, "");
                assert_eq!(find(&also, &path(&text)), Some(entry), "{also} {text}");
            }
            assert_eq!(
                find(&Method::OPTIONS, &path(&sample(entry, &fill, ""))),
                None
            );
        }
    }

    #[test]
    fn every_row_is_found_by_the_match_once_and_rows_are_distinct() {
        for (i, a) in CATALOG.iter().enumerate() {
            for b in &CATALOG[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
            assert!(
                a.path.bytes().all(|c| !c.is_ascii_uppercase() && c != b'.'),
                "{}: a route key is lowercase without .json",
                a.path
            );
            assert!(
                !a.needs_user || a.method != "GET",
                "{}: a read never needs a user",
                a.path
            );
        }
    }

    #[test]
    fn outside_the_catalog() {
        for (method, text) in [
            (Method::GET, "/data/Car.json"),
            (Method::POST, "/data/Car.json"),
            (Method::POST, "/class.json"),
            (Method::GET, "/"),
            (Method::GET, "/anything"),
            (Method::PUT, "/users"),
            (Method::POST, "/users/5/token"),
            (Method::GET, "/users/1/2/3"),
            (Method::GET, "/chat/dialog/5d75"),
            (Method::POST, "/chat/dialog/5d75/notifications"),
            (Method::GET, "/chat.json/dialog"),
            (Method::GET, "/blobs/1/2/3"),
            (Method::PUT, "/session"),
        ] {
            assert_eq!(find(&method, &path(text)), None, "{method} {text}");
        }
        // The format extension of a last segment is Rails' format, not part of the word.
        assert_eq!(
            find(&Method::POST, &path("/users/5/tokens.xml")),
            Some(&USER_TOKENS)
        );
    }

    #[test]
    fn check_reports_what_a_key_reaches_and_what_it_lost() {
        let sha = |n: u8| format!("{:064x}", n);
        let text = format!(
            "version: 1\nkeys:\n\
             - {{ id: a, sha256: {}, on_behalf_of: any, routes: [GET /users/*, '* /chat/Dialog'] }}\n\
             - {{ id: b, sha256: {}, on_behalf_of: none, powers: [create_users], unchecked_routes: [GET /data/*] }}\n",
            sha(1),
            sha(2)
        );
        let policy = crate::policy::compile(&text).unwrap();
        assert_eq!(
            reach(&policy.keys[0]),
            "users (read), dialogs (partly); refused: sessions, messages, push, blobs, address book, custom objects"
        );
        assert_eq!(
            reach(&policy.keys[1]),
            "users (partly), dialogs, messages (read), push (read), \
             blobs (read), address book (read); refused: sessions, custom objects; \
             needs powers: mint_tokens, manage_users; \
             unchecked: 1 route(s) outside the catalog, forwarded unjudged"
        );
    }
}
