//! The dialog rule table (FACTS.md, "Rules for an update, by dialog type"): who may create,
//! update and force-delete which dialogs, and which fields each dialog type takes.
//!
//! | type | the owner | an occupant | anyone else |
//! |---|---|---|---|
//! | 3 PRIVATE | `data` | `data` | 403 |
//! | 2 GROUP | everything | `name`, `photo`, `data`, adding occupants, removing himself | 403 |
//! | 1 PUBLIC_GROUP | everything | 403 | 403 |
//!
//! A private dialog takes no `name` (422 `dialog_name_on_private`) and no `photo`, owner,
//! occupant or admin change (422 `dialog_private_field`), whoever asks, the application too.
//! Admins get no rights beyond an occupant's: the table grants them none. The application
//! ([`Actor::Application`]) skips the who-may rows, never the field rows.
//!
//! Checks run in a fixed order and the first failure is reported: membership first (so that
//! an outsider learns nothing about a dialog, not even its type), then the fields the dialog's
//! type does not take, then the owner-only operations.

use super::document::distinct;
use super::{Actor, CreateDoc, Dialog, DialogType, Rejection, UpdateDoc, NO_PERMISSION};

/// Judges a create. Only a private dialog has rules: no `name` or `photo`, and exactly two
/// distinct occupants. A user names the one other occupant (listing himself too is fine); the
/// application, being no occupant, names both.
pub fn check_create(doc: &CreateDoc, actor: Actor) -> Result<(), Rejection> {
    if doc.kind != DialogType::Private {
        return Ok(());
    }
    if doc.name.is_some() {
        return Err(name_on_private());
    }
    if doc.photo.is_some() {
        return Err(private_field("photo"));
    }
    let mut ids = distinct(doc.occupants_ids.as_deref().unwrap_or_default());
    let (ok, message) = match actor {
        Actor::User(me) => {
            ids.remove(&me);
            (
                ids.len() == 1,
                "must name exactly one user besides you for a private dialog",
            )
        }
        Actor::Application => (
            ids.len() == 2,
            "must name exactly two users for a private dialog",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid(
            "dialog_private_occupants",
            "occupants_ids",
            message,
        ))
    }
}

/// Judges an update of `dialog`, as looked up by the id in the path.
pub fn check_update(doc: &UpdateDoc, dialog: &Dialog, actor: Actor) -> Result<(), Rejection> {
    let me = match actor {
        Actor::Application => None,
        Actor::User(me) => Some(me),
    };
    let is_owner = me.is_some_and(|me| me == dialog.owner);

    if let Some(me) = me {
        match dialog.kind {
            DialogType::PublicGroup if !is_owner => {
                return Err(Rejection::forbidden(
                    "dialog_public_owner_only",
                    "Only the owner may update a public dialog",
                ))
            }
            DialogType::Private | DialogType::Group if !dialog.is_member(me) => {
                return Err(Rejection::forbidden("dialog_not_occupant", NO_PERMISSION))
            }
            _ => {}
        }
    }

    if dialog.kind == DialogType::Private {
        if doc.name.is_some() {
            return Err(name_on_private());
        }
        let fields = [
            ("photo", doc.photo.is_some()),
            ("user_id", doc.owner.is_some()),
            ("push_all", doc.push_all.is_some()),
            ("pull_all", doc.pull_all.is_some()),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, present)| *present) {
            return Err(private_field(field));
        }
    }

    // Past membership, only a group occupant who is not the owner has anything left to be
    // refused: the owner and the application may do everything a group takes.
    let Some(me) = me else { return Ok(()) };
    if dialog.kind != DialogType::Group || is_owner {
        return Ok(());
    }
    if doc.owner.is_some() {
        return Err(owner_only(
            "Only the owner may hand a dialog to a new owner",
        ));
    }
    let admin_change = [&doc.push_all, &doc.pull_all]
        .into_iter()
        .flatten()
        .any(|c| c.admin_ids.is_some());
    if admin_change {
        return Err(owner_only("Only the owner may change the admins"));
    }
    let pulled = doc
        .pull_all
        .as_ref()
        .and_then(|c| c.occupants_ids.as_deref());
    if pulled.unwrap_or_default().iter().any(|&id| id != me) {
        return Err(Rejection::forbidden(
            "dialog_remove_others",
            "Only the owner may remove other occupants",
        ));
    }
    Ok(())
}

/// Judges a delete. A plain delete only removes the dialogs for the caller, so it always
/// passes and needs no lookup. A force delete (see [`super::read`]) needs the owner of every
/// dialog in the path: the caller looks each one up and answers 404 for any it cannot find.
pub fn check_delete(force: bool, dialogs: &[Dialog], actor: Actor) -> Result<(), Rejection> {
    let Actor::User(me) = actor else {
        return Ok(());
    };
    if force && dialogs.iter().any(|d| d.owner != me) {
        return Err(Rejection::forbidden(
            "dialog_force_delete_not_owner",
            "Only the owner may delete a dialog for everyone",
        ));
    }
    Ok(())
}

fn name_on_private() -> Rejection {
    Rejection::invalid(
        "dialog_name_on_private",
        "name",
        "can be set for a group or public dialog only",
    )
}

fn private_field(field: &str) -> Rejection {
    Rejection::invalid(
        "dialog_private_field",
        field,
        "cannot be changed on a private dialog",
    )
}

fn owner_only(message: &str) -> Rejection {
    Rejection::forbidden("dialog_owner_only", message)
}

#[cfg(test)]
mod tests;
