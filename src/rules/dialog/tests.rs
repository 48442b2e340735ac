//! Tests of `dialog`.

use super::*;
use crate::rules::IdChanges;
use proptest::prelude::*;

const OWNER: u64 = 1;
const OCCUPANT: u64 = 2;
const OTHER: u64 = 3;
const OUTSIDER: u64 = 9;

fn dialog(kind: DialogType) -> Dialog {
    let occupants = match kind {
        DialogType::Private => vec![OWNER, OCCUPANT],
        DialogType::Group => vec![OWNER, OCCUPANT, OTHER],
        DialogType::PublicGroup => vec![],
    };
    Dialog {
        id: "d".into(),
        kind,
        owner: OWNER,
        occupants,
        admins: vec![],
    }
}

fn push(occupants: Option<Vec<u64>>, admins: Option<Vec<u64>>) -> Option<IdChanges> {
    Some(IdChanges {
        occupants_ids: occupants,
        admin_ids: admins,
    })
}

/// The operations of the matrix, as update documents; `me` is the acting user's id.
fn operation(op: &str, me: u64) -> UpdateDoc {
    let doc = UpdateDoc::default();
    match op {
        "name" => UpdateDoc {
            name: Some("n".into()),
            ..doc
        },
        "photo" => UpdateDoc {
            photo: Some("p".into()),
            ..doc
        },
        "data" => UpdateDoc {
            data: Some(crate::rules::CustomData {
                class_name: "C".into(),
            }),
            ..doc
        },
        "add" => UpdateDoc {
            push_all: push(Some(vec![7]), None),
            ..doc
        },
        "remove self" => UpdateDoc {
            pull_all: push(Some(vec![me]), None),
            ..doc
        },
        "remove other" => UpdateDoc {
            pull_all: push(Some(vec![OTHER]), None),
            ..doc
        },
        "owner change" => UpdateDoc {
            owner: Some(OCCUPANT),
            ..doc
        },
        "admin add" => UpdateDoc {
            push_all: push(None, Some(vec![OCCUPANT])),
            ..doc
        },
        "admin remove" => UpdateDoc {
            pull_all: push(None, Some(vec![OCCUPANT])),
            ..doc
        },
        "nothing" => doc,
        _ => panic!("unknown operation {op}"),
    }
}

fn outcome(r: Result<(), Rejection>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(rej) => {
            assert_eq!(rej.field.is_some(), rej.status == 422, "{rej}");
            format!("{} {}", rej.status, rej.reason)
        }
    }
}

const ACTORS: [(&str, Actor); 4] = [
    ("owner", Actor::User(OWNER)),
    ("occupant", Actor::User(OCCUPANT)),
    ("outsider", Actor::User(OUTSIDER)),
    ("application", Actor::Application),
];

/// type x operation -> expected outcome for [owner, occupant, outsider, application].
#[test]
fn update_matrix() {
    use DialogType::*;
    const OK: &str = "ok";
    const NAME_PRIV: &str = "422 dialog_name_on_private";
    const PRIV_FIELD: &str = "422 dialog_private_field";
    const NOT_OCC: &str = "403 dialog_not_occupant";
    const PUB_OWNER: &str = "403 dialog_public_owner_only";
    const OWNER_ONLY: &str = "403 dialog_owner_only";
    const OTHERS: &str = "403 dialog_remove_others";
    let table: &[(DialogType, &str, [&str; 4])] = &[
        (Private, "name", [NAME_PRIV, NAME_PRIV, NOT_OCC, NAME_PRIV]),
        (
            Private,
            "photo",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (Private, "data", [OK, OK, NOT_OCC, OK]),
        (
            Private,
            "add",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (
            Private,
            "remove self",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (
            Private,
            "remove other",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (
            Private,
            "owner change",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (
            Private,
            "admin add",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (
            Private,
            "admin remove",
            [PRIV_FIELD, PRIV_FIELD, NOT_OCC, PRIV_FIELD],
        ),
        (Private, "nothing", [OK, OK, NOT_OCC, OK]),
        (Group, "name", [OK, OK, NOT_OCC, OK]),
        (Group, "photo", [OK, OK, NOT_OCC, OK]),
        (Group, "data", [OK, OK, NOT_OCC, OK]),
        (Group, "add", [OK, OK, NOT_OCC, OK]),
        (Group, "remove self", [OK, OK, NOT_OCC, OK]),
        (Group, "remove other", [OK, OTHERS, NOT_OCC, OK]),
        (Group, "owner change", [OK, OWNER_ONLY, NOT_OCC, OK]),
        (Group, "admin add", [OK, OWNER_ONLY, NOT_OCC, OK]),
        (Group, "admin remove", [OK, OWNER_ONLY, NOT_OCC, OK]),
        (Group, "nothing", [OK, OK, NOT_OCC, OK]),
        (PublicGroup, "name", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "photo", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "data", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "add", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "remove self", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "remove other", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "owner change", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "admin add", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "admin remove", [OK, PUB_OWNER, PUB_OWNER, OK]),
        (PublicGroup, "nothing", [OK, PUB_OWNER, PUB_OWNER, OK]),
    ];
    for (kind, op, expected) in table {
        for ((who, actor), want) in ACTORS.iter().zip(expected) {
            let me = match actor {
                Actor::User(u) => *u,
                Actor::Application => OCCUPANT,
            };
            let got = outcome(check_update(&operation(op, me), &dialog(*kind), *actor));
            assert_eq!(&got, want, "{kind:?} {op} by {who}");
        }
    }
}

#[test]
fn owner_need_not_be_listed_as_occupant() {
    let mut d = dialog(DialogType::Group);
    d.occupants.retain(|&u| u != OWNER);
    let doc = operation("remove other", OWNER);
    assert_eq!(check_update(&doc, &d, Actor::User(OWNER)), Ok(()));
    d.kind = DialogType::Private;
    assert_eq!(
        check_update(&operation("data", OWNER), &d, Actor::User(OWNER)),
        Ok(())
    );
}

#[test]
fn group_occupant_pulling_himself_and_another_is_refused() {
    let doc = UpdateDoc {
        pull_all: push(Some(vec![OCCUPANT, OTHER]), None),
        ..Default::default()
    };
    assert_eq!(
        outcome(check_update(
            &doc,
            &dialog(DialogType::Group),
            Actor::User(OCCUPANT)
        )),
        "403 dialog_remove_others"
    );
    // Pushing occupants and pulling himself in one request is fine.
    let doc = UpdateDoc {
        push_all: push(Some(vec![7, 8]), None),
        pull_all: push(Some(vec![OCCUPANT]), None),
        ..Default::default()
    };
    assert_eq!(
        check_update(&doc, &dialog(DialogType::Group), Actor::User(OCCUPANT)),
        Ok(())
    );
}

#[test]
fn admins_have_no_owner_rights() {
    let mut d = dialog(DialogType::Group);
    d.admins = vec![OCCUPANT];
    assert_eq!(
        outcome(check_update(
            &operation("remove other", OCCUPANT),
            &d,
            Actor::User(OCCUPANT)
        )),
        "403 dialog_remove_others"
    );
    d.kind = DialogType::PublicGroup;
    assert_eq!(
        outcome(check_update(
            &operation("name", OCCUPANT),
            &d,
            Actor::User(OCCUPANT)
        )),
        "403 dialog_public_owner_only"
    );
}

#[test]
fn rejections_have_quickblox_shapes() {
    let rej = check_update(
        &operation("name", OWNER),
        &dialog(DialogType::Private),
        Actor::User(OWNER),
    )
    .unwrap_err();
    assert_eq!(
        rej.body(),
        serde_json::json!({"errors":{"name":["can be set for a group or public dialog only"]}})
    );
    let rej = check_update(
        &operation("data", OUTSIDER),
        &dialog(DialogType::Group),
        Actor::User(OUTSIDER),
    )
    .unwrap_err();
    assert_eq!(
        rej.body(),
        serde_json::json!({"errors":{"base":["You don't have appropriate permissions to perform this operation"]}})
    );
}

#[test]
fn delete_matrix() {
    for kind in [
        DialogType::Private,
        DialogType::Group,
        DialogType::PublicGroup,
    ] {
        let d = [dialog(kind)];
        for ((who, actor), want) in ACTORS.iter().zip([
            "ok",
            "403 dialog_force_delete_not_owner",
            "403 dialog_force_delete_not_owner",
            "ok",
        ]) {
            assert_eq!(
                outcome(check_delete(true, &d, *actor)),
                want,
                "{kind:?} force by {who}"
            );
            assert_eq!(
                outcome(check_delete(false, &d, *actor)),
                "ok",
                "{kind:?} plain by {who}"
            );
        }
    }
    let mut theirs = dialog(DialogType::Group);
    theirs.owner = OCCUPANT;
    let both = [dialog(DialogType::Group), theirs];
    assert_eq!(
        outcome(check_delete(true, &both, Actor::User(OWNER))),
        "403 dialog_force_delete_not_owner"
    );
    assert_eq!(
        outcome(check_delete(true, &both, Actor::User(OCCUPANT))),
        "403 dialog_force_delete_not_owner"
    );
    assert_eq!(outcome(check_delete(true, &both, Actor::Application)), "ok");
    assert_eq!(
        outcome(check_delete(false, &both, Actor::User(OUTSIDER))),
        "ok"
    );
}

fn create(kind: DialogType, occupants: Option<Vec<u64>>) -> CreateDoc {
    CreateDoc {
        kind,
        name: None,
        photo: None,
        occupants_ids: occupants,
        data: None,
        extra: vec![],
    }
}

#[test]
fn create_matrix() {
    use DialogType::*;
    let me = Actor::User(OWNER);
    let app = Actor::Application;
    let cases: &[(CreateDoc, Actor, &str)] = &[
        (create(Group, Some(vec![2, 3])), me, "ok"),
        (create(Group, None), me, "ok"),
        (create(PublicGroup, None), me, "ok"),
        (create(PublicGroup, Some(vec![])), app, "ok"),
        (
            CreateDoc {
                name: Some("g".into()),
                photo: Some("p".into()),
                ..create(Group, None)
            },
            me,
            "ok",
        ),
        (create(Private, Some(vec![2])), me, "ok"),
        (create(Private, Some(vec![OWNER, 2])), me, "ok"),
        (create(Private, Some(vec![2, 2, OWNER])), me, "ok"),
        (
            create(Private, Some(vec![2, 3])),
            me,
            "422 dialog_private_occupants",
        ),
        (
            create(Private, Some(vec![OWNER])),
            me,
            "422 dialog_private_occupants",
        ),
        (
            create(Private, Some(vec![])),
            me,
            "422 dialog_private_occupants",
        ),
        (create(Private, None), me, "422 dialog_private_occupants"),
        (create(Private, Some(vec![2, 3])), app, "ok"),
        (create(Private, Some(vec![2, 3, 2])), app, "ok"),
        (
            create(Private, Some(vec![2])),
            app,
            "422 dialog_private_occupants",
        ),
        (
            create(Private, Some(vec![1, 2, 3])),
            app,
            "422 dialog_private_occupants",
        ),
        (
            CreateDoc {
                name: Some("n".into()),
                ..create(Private, Some(vec![2]))
            },
            me,
            "422 dialog_name_on_private",
        ),
        (
            CreateDoc {
                name: Some("n".into()),
                ..create(Private, Some(vec![2, 3]))
            },
            app,
            "422 dialog_name_on_private",
        ),
        (
            CreateDoc {
                photo: Some("p".into()),
                ..create(Private, Some(vec![2]))
            },
            me,
            "422 dialog_private_field",
        ),
    ];
    for (doc, actor, want) in cases {
        assert_eq!(
            outcome(check_create(doc, *actor)),
            *want,
            "{doc:?} by {actor:?}"
        );
    }
}

/// FACTS.md's table, written as plainly as possible and independently of `check_update`.
fn reference(doc: &UpdateDoc, d: &Dialog, actor: Actor) -> Result<(), (u16, &'static str)> {
    let (app, me) = match actor {
        Actor::Application => (true, 0),
        Actor::User(u) => (false, u),
    };
    let owner = !app && me == d.owner;
    let member = owner || (!app && d.occupants.contains(&me));
    let touches_admins = doc
        .push_all
        .iter()
        .chain(doc.pull_all.iter())
        .any(|c| c.admin_ids.is_some());
    let removed: Vec<u64> = doc
        .pull_all
        .iter()
        .flat_map(|c| c.occupants_ids.clone().unwrap_or_default())
        .collect();
    let removes_others = removed.iter().any(|&u| u != me);
    match d.kind {
        DialogType::PublicGroup => {
            if !app && !owner {
                return Err((403, "dialog_public_owner_only"));
            }
            Ok(())
        }
        DialogType::Private => {
            if !app && !member {
                return Err((403, "dialog_not_occupant"));
            }
            if doc.name.is_some() {
                return Err((422, "dialog_name_on_private"));
            }
            if doc.photo.is_some()
                || doc.owner.is_some()
                || doc.push_all.is_some()
                || doc.pull_all.is_some()
            {
                return Err((422, "dialog_private_field"));
            }
            Ok(())
        }
        DialogType::Group => {
            if app || owner {
                return Ok(());
            }
            if !member {
                return Err((403, "dialog_not_occupant"));
            }
            if doc.owner.is_some() || touches_admins {
                return Err((403, "dialog_owner_only"));
            }
            if removes_others {
                return Err((403, "dialog_remove_others"));
            }
            Ok(())
        }
    }
}

fn small_ids() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(1u64..=6, 0..4)
}

fn dialogs() -> impl Strategy<Value = Dialog> {
    (
        prop_oneof![
            Just(DialogType::PublicGroup),
            Just(DialogType::Group),
            Just(DialogType::Private)
        ],
        1u64..=6,
        small_ids(),
        small_ids(),
    )
        .prop_map(|(kind, owner, occupants, admins)| Dialog {
            id: "d".into(),
            kind,
            owner,
            occupants,
            admins,
        })
}

fn actors() -> impl Strategy<Value = Actor> {
    prop_oneof![Just(Actor::Application), (1u64..=7).prop_map(Actor::User)]
}

fn updates() -> impl Strategy<Value = UpdateDoc> {
    crate::rules::document::tests::update_docs_with(1..=7, ["n", "p", "C"], true, true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn check_update_matches_reference(doc in updates(), d in dialogs(), actor in actors()) {
        let got = check_update(&doc, &d, actor).map_err(|r| (r.status, r.reason));
        prop_assert_eq!(got, reference(&doc, &d, actor));
    }

    #[test]
    fn check_delete_matches_reference(force in any::<bool>(), ds in prop::collection::vec(dialogs(), 0..4), actor in actors()) {
        let allowed = match actor {
            Actor::Application => true,
            Actor::User(me) => !force || ds.iter().all(|d| d.owner == me),
        };
        prop_assert_eq!(check_delete(force, &ds, actor).is_ok(), allowed);
    }

    #[test]
    fn check_create_matches_reference(
        kind in prop_oneof![Just(DialogType::PublicGroup), Just(DialogType::Group), Just(DialogType::Private)],
        occupants in prop::option::of(small_ids()),
        name in any::<bool>(),
        photo in any::<bool>(),
        actor in actors(),
    ) {
        let doc = CreateDoc {
            kind,
            name: name.then(|| "n".into()),
            photo: photo.then(|| "p".into()),
            occupants_ids: occupants.clone(),
            data: None,
            extra: vec![],
        };
        let mut others: Vec<u64> = occupants.unwrap_or_default();
        others.sort_unstable();
        others.dedup();
        let want = if kind != DialogType::Private {
            Ok(())
        } else if name {
            Err((422, "dialog_name_on_private"))
        } else if photo {
            Err((422, "dialog_private_field"))
        } else {
            let count_ok = match actor {
                Actor::Application => others.len() == 2,
                Actor::User(me) => others.iter().filter(|&&u| u != me).count() == 1,
            };
            if count_ok { Ok(()) } else { Err((422, "dialog_private_occupants")) }
        };
        prop_assert_eq!(check_create(&doc, actor).map_err(|r| (r.status, r.reason)), want);
    }
}
