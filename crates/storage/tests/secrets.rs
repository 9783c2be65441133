//! Sealed secrets against a real Postgres: write-only metadata, project overrides, tampering,
//! and key rotation under concurrent writes, interrupted and resumed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine;
use cadenza_crypto::KeyRing;
use cadenza_domain::{AgentSettings, OrgId, ProjectId, Repository};
use cadenza_storage::secrets::{self, SecretScope, StoredSecret};
use cadenza_storage::{StorageError, orgs, projects};
use cadenza_testkit::infra::TestDatabase;
use secrecy::{ExposeSecret, SecretString};

fn ring(spec_keys: &[(&str, &str)]) -> KeyRing {
    let spec = spec_keys
        .iter()
        .map(|(id, key)| format!("{id}:{key}"))
        .collect::<Vec<_>>()
        .join(",");
    KeyRing::from_spec(&spec).expect("key ring")
}

fn new_key() -> String {
    let (_, key) = KeyRing::generate_key().expect("key");
    key.expose_secret().to_owned()
}

async fn org_with_project(db: &TestDatabase, slug: &str) -> (OrgId, ProjectId) {
    let mut conn = db.pool.acquire().await.expect("conn");
    let org = orgs::create(&mut conn, slug, slug).await.expect("org");
    let project = projects::create(
        &mut conn,
        org.id,
        "p",
        "p",
        &AgentSettings::with_image("img"),
        &Repository::default(),
    )
    .await
    .expect("project");
    (org.id, project.id)
}

async fn put(
    db: &TestDatabase,
    keyring: &KeyRing,
    scope: SecretScope,
    name: &str,
    value: &str,
) -> secrets::SecretMeta {
    let mut conn = db.pool.acquire().await.expect("conn");
    secrets::put(
        &mut conn,
        keyring,
        scope,
        name,
        &SecretString::from(value),
        "user:alice@example.com",
    )
    .await
    .expect("put")
    .0
}

async fn resolve_one(
    db: &TestDatabase,
    org: OrgId,
    project: ProjectId,
    name: &str,
) -> StoredSecret {
    let mut conn = db.pool.acquire().await.expect("conn");
    let mut found = secrets::resolve(&mut conn, org, project, &[name.to_owned()])
        .await
        .expect("resolve");
    assert_eq!(found.len(), 1, "{name} should resolve");
    found.remove(0)
}

#[tokio::test]
async fn writes_create_versions_and_metadata_never_holds_the_value() {
    let db = TestDatabase::create().await.expect("db");
    let keyring = KeyRing::generate_ephemeral("k1").expect("ring");
    let (org, project) = org_with_project(&db, "meta").await;
    let value = "sk-canary-7f3a9d1c55e0";

    let first = put(&db, &keyring, SecretScope::Org(org), "LLM_KEY", value).await;
    assert_eq!(first.version, 1);
    assert_eq!(first.kek_id, "k1");
    assert_eq!(first.created_by.as_deref(), Some("user:alice@example.com"));
    let second = put(
        &db,
        &keyring,
        SecretScope::Org(org),
        "LLM_KEY",
        "another-value",
    )
    .await;
    assert_eq!((second.id, second.version), (first.id, 2));

    let mut conn = db.pool.acquire().await.expect("conn");
    let listed = secrets::list(&mut conn, SecretScope::Org(org))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        secrets::list(&mut conn, SecretScope::Project(org, project))
            .await
            .expect("list")
            .is_empty(),
        "an org secret is not a project secret"
    );

    // The row holds neither the value nor any of its common encodings.
    let sealed: Vec<u8> = sqlx::query_scalar("select sealed from secrets where id = $1")
        .bind(first.id)
        .fetch_one(&mut *conn)
        .await
        .expect("row");
    let dump = format!(
        "{}{}",
        String::from_utf8_lossy(&sealed),
        hex::encode(&sealed)
    );
    for needle in [
        "another-value".to_owned(),
        hex::encode("another-value"),
        base64::engine::general_purpose::STANDARD.encode("another-value"),
    ] {
        assert!(!dump.contains(&needle), "{needle} stored in the clear");
    }

    let stored = resolve_one(&db, org, project, "LLM_KEY").await;
    assert_eq!(
        secrets::open(&keyring, &stored)
            .expect("open")
            .expose_secret(),
        "another-value"
    );

    for bad in ["lower", "1ABC", "WITH-DASH", "", &"A".repeat(65)] {
        let err = secrets::put(
            &mut conn,
            &keyring,
            SecretScope::Org(org),
            bad,
            &SecretString::from("value"),
            "x",
        )
        .await
        .expect_err("invalid name");
        assert!(matches!(err, StorageError::Conflict(_)), "{bad}: {err}");
    }

    let deleted = secrets::delete(&mut conn, SecretScope::Org(org), "LLM_KEY")
        .await
        .expect("delete");
    assert_eq!(deleted.id, first.id);
    assert!(matches!(
        secrets::get(&mut conn, SecretScope::Org(org), "LLM_KEY").await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_project_secret_overrides_the_org_secret_of_the_same_name() {
    let db = TestDatabase::create().await.expect("db");
    let keyring = KeyRing::generate_ephemeral("k1").expect("ring");
    let (org, project) = org_with_project(&db, "over").await;
    let (other_org, other_project) = org_with_project(&db, "other").await;
    put(
        &db,
        &keyring,
        SecretScope::Org(org),
        "TOKEN",
        "org-wide-value",
    )
    .await;
    put(
        &db,
        &keyring,
        SecretScope::Org(org),
        "ONLY_ORG",
        "org-only-value",
    )
    .await;
    put(
        &db,
        &keyring,
        SecretScope::Project(org, project),
        "TOKEN",
        "project-value",
    )
    .await;
    put(
        &db,
        &keyring,
        SecretScope::Org(other_org),
        "FOREIGN",
        "other-org",
    )
    .await;

    let mut conn = db.pool.acquire().await.expect("conn");
    let names = ["TOKEN", "ONLY_ORG", "FOREIGN", "MISSING"].map(str::to_owned);
    let found = secrets::resolve(&mut conn, org, project, &names)
        .await
        .expect("resolve");
    let values: BTreeMap<_, _> = found
        .iter()
        .map(|secret| {
            (
                secret.name.clone(),
                secrets::open(&keyring, secret)
                    .expect("open")
                    .expose_secret()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        values,
        BTreeMap::from([
            ("ONLY_ORG".to_owned(), "org-only-value".to_owned()),
            ("TOKEN".to_owned(), "project-value".to_owned()),
        ]),
        "the project value wins, and another org's secret is never visible"
    );
    // The other org's project does not see this org's secrets either.
    assert!(
        secrets::resolve(&mut conn, other_org, other_project, &names[..1])
            .await
            .expect("resolve")
            .is_empty()
    );
}

#[tokio::test]
async fn tampered_or_moved_ciphertexts_fail_to_open_with_a_clear_error() {
    let db = TestDatabase::create().await.expect("db");
    let keyring = KeyRing::generate_ephemeral("kek-a").expect("ring");
    let (org, project) = org_with_project(&db, "tamper").await;
    let (other_org, other_project) = org_with_project(&db, "victim").await;
    let meta = put(
        &db,
        &keyring,
        SecretScope::Org(org),
        "SECRET",
        "tamper-me-value",
    )
    .await;
    let original = resolve_one(&db, org, project, "SECRET").await;
    let id_len = usize::from(original.sealed[1]);

    // Offsets of format 1 (docs/SECURITY.md): id, DEK nonce, wrapped DEK, payload nonce, payload.
    let flips = [
        ("wrapped key nonce", 2 + id_len),
        ("wrapped key", 2 + id_len + 12 + 5),
        ("payload nonce", 2 + id_len + 12 + 48),
        ("ciphertext", 2 + id_len + 12 + 48 + 12 + 2),
    ];
    for (part, offset) in flips {
        let mut tampered = original.clone();
        tampered.sealed[offset] ^= 0x01;
        let err = secrets::open(&keyring, &tampered).expect_err(part);
        let message = err.to_string();
        assert!(
            matches!(err, cadenza_crypto::Error::Decrypt { .. }),
            "{part}: {message}"
        );
        assert!(message.contains("cannot decrypt"), "{part}: {message}");
        assert!(!message.contains("tamper-me-value"));
    }

    // A row moved to another org (as a database edit would) no longer opens.
    let mut conn = db.pool.acquire().await.expect("conn");
    sqlx::query("update secrets set org_id = $2 where id = $1")
        .bind(meta.id)
        .bind(other_org.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("move");
    let moved = resolve_one(&db, other_org, other_project, "SECRET").await;
    assert!(matches!(
        secrets::open(&keyring, &moved),
        Err(cadenza_crypto::Error::Decrypt { .. })
    ));

    // Its ciphertext pasted into another secret's row does not open there either.
    let target = put(
        &db,
        &keyring,
        SecretScope::Org(other_org),
        "TARGET",
        "target-value",
    )
    .await;
    sqlx::query("update secrets set sealed = $2 where id = $1")
        .bind(target.id)
        .bind(&original.sealed)
        .execute(&mut *conn)
        .await
        .expect("paste");
    let pasted = resolve_one(&db, other_org, other_project, "TARGET").await;
    assert!(secrets::open(&keyring, &pasted).is_err());

    // Garbage in the column is a clear error too, not a panic.
    let mut garbage = original.clone();
    garbage.sealed.truncate(10);
    assert!(secrets::open(&keyring, &garbage).is_err());
}

#[tokio::test]
async fn start_up_check_names_a_stored_key_id_missing_from_the_ring() {
    let db = TestDatabase::create().await.expect("db");
    let old = new_key();
    let (org, _) = org_with_project(&db, "startup").await;
    put(
        &db,
        &ring(&[("kek-old", &old)]),
        SecretScope::Org(org),
        "A_SECRET",
        "value-one",
    )
    .await;

    let mut conn = db.pool.acquire().await.expect("conn");
    let without_old = ring(&[("kek-new", &new_key())]);
    let err = secrets::check_keyring(&mut conn, &without_old)
        .await
        .expect_err("the old key is still needed");
    assert!(err.to_string().contains("kek-old"), "{err}");
    secrets::check_keyring(
        &mut conn,
        &ring(&[("kek-new", &new_key()), ("kek-old", &old)]),
    )
    .await
    .expect("both keys present");
}

/// New values keep being written (with the new key active) and runs keep being created while
/// the job re-wraps; it is interrupted once and resumed. Afterwards every secret opens with a
/// ring that no longer has the old key, with the latest value written.
#[tokio::test]
async fn rotation_under_concurrent_writes_can_be_interrupted_and_resumed() {
    let db = TestDatabase::create().await.expect("db");
    let (old_key, new_key) = (new_key(), new_key());
    let old_ring = ring(&[("kek-old", &old_key)]);
    let both = Arc::new(ring(&[("kek-new", &new_key), ("kek-old", &old_key)]));
    let (org, project) = org_with_project(&db, "rotate").await;

    let mut expected = BTreeMap::new();
    for i in 0..120 {
        let name = format!("S_{i:03}");
        let value = format!("initial-value-{i}");
        put(&db, &old_ring, SecretScope::Org(org), &name, &value).await;
        expected.insert(name, value);
    }
    let expected = Arc::new(std::sync::Mutex::new(expected));

    // Writers: new versions of existing secrets and new secrets, under the promoted key, plus
    // run submissions, until the rotation is done. Each writer has its own names, so the last
    // value it records is the last value written.
    let done = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..3 {
        let (pool, keyring, done, expected, writes) = (
            db.pool.clone(),
            both.clone(),
            done.clone(),
            expected.clone(),
            writes.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !done.load(Ordering::SeqCst) && i < 2_000 {
                let name = if i.is_multiple_of(2) {
                    format!("S_{:03}", ((i / 2) * 3 + writer) % 120)
                } else {
                    format!("W{writer}_{i}")
                };
                let value = format!("written-{writer}-{i}");
                let mut conn = pool.acquire().await.expect("conn");
                secrets::put(
                    &mut conn,
                    &keyring,
                    SecretScope::Org(org),
                    &name,
                    &SecretString::from(value.as_str()),
                    "writer",
                )
                .await
                .expect("concurrent put");
                cadenza_storage::runs::submit(
                    &mut conn,
                    cadenza_storage::runs::NewRun {
                        org_id: org,
                        project_id: project,
                        prompt: "$ true",
                        idempotency_key: None,
                    },
                )
                .await
                .expect("run");
                expected.lock().expect("lock").insert(name, value);
                writes.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }

    // First attempt: stopped after three batches.
    let batches = AtomicU64::new(0);
    let first = secrets::rewrap_all(
        &db.pool,
        &both,
        10,
        |_| {
            batches.fetch_add(1, Ordering::SeqCst);
        },
        || batches.load(Ordering::SeqCst) >= 3,
    )
    .await
    .expect("first attempt");
    assert!(first.interrupted);
    assert!(
        (1..=30).contains(&first.progress.rewrapped),
        "{:?}",
        first.progress
    );
    assert!(
        first.by_kek.iter().any(|(id, n)| id == "kek-old" && *n > 0),
        "interrupted early, old rows remain: {:?}",
        first.by_kek
    );

    // Resumed: runs to the end while the writers continue.
    let mut reports = 0;
    let second = secrets::rewrap_all(&db.pool, &both, 10, |_| reports += 1, || false)
        .await
        .expect("resumed");
    done.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(!second.interrupted);
    assert!(second.failed.is_empty(), "{:?}", second.failed);
    assert!(reports > 0);
    assert!(
        writes.load(Ordering::SeqCst) > 0,
        "the writers ran during the rotation"
    );

    let mut conn = db.pool.acquire().await.expect("conn");
    let by_kek = secrets::count_by_kek(&mut conn).await.expect("count");
    assert!(
        by_kek.iter().all(|(id, _)| id == "kek-new"),
        "no data key is wrapped by the old key any more: {by_kek:?}"
    );
    // The old key can go: every secret opens with the new key alone, with its latest value.
    let new_only = ring(&[("kek-new", &new_key)]);
    secrets::check_keyring(&mut conn, &new_only)
        .await
        .expect("the old key is no longer needed");
    let expected = expected.lock().expect("lock").clone();
    let names: Vec<String> = expected.keys().cloned().collect();
    let stored = secrets::resolve(&mut conn, org, project, &names)
        .await
        .expect("resolve");
    assert_eq!(stored.len(), expected.len(), "nothing lost");
    for secret in stored {
        let value = secrets::open(&new_only, &secret).expect("opens with the new key");
        assert_eq!(
            value.expose_secret(),
            expected[&secret.name],
            "{}",
            secret.name
        );
    }
}

#[tokio::test]
async fn a_secret_moved_to_another_project_or_renamed_no_longer_opens() {
    let db = TestDatabase::create().await.expect("db");
    let keyring = ring(&[("k1", &new_key())]);
    let (org, project) = org_with_project(&db, "binding").await;
    let mut conn = db.pool.acquire().await.expect("conn");
    let other_project = projects::create(
        &mut conn,
        org,
        "other",
        "other",
        &AgentSettings::with_image("img"),
        &Repository::default(),
    )
    .await
    .expect("project")
    .id;
    let meta = put(
        &db,
        &keyring,
        SecretScope::Project(org, project),
        "GIT_TOKEN",
        "project-token-value",
    )
    .await;
    let stored = resolve_one(&db, org, project, "GIT_TOKEN").await;
    assert_eq!(
        secrets::open(&keyring, &stored)
            .expect("opens in place")
            .expose_secret(),
        "project-token-value"
    );

    // Moved to another project of the same org (as a database edit would).
    sqlx::query("update secrets set project_id = $2 where id = $1")
        .bind(meta.id)
        .bind(other_project.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("move");
    let moved = resolve_one(&db, org, other_project, "GIT_TOKEN").await;
    assert!(matches!(
        secrets::open(&keyring, &moved),
        Err(cadenza_crypto::Error::Decrypt { .. })
    ));

    // Made org-wide, so every project's runs would get it.
    sqlx::query("update secrets set project_id = null where id = $1")
        .bind(meta.id)
        .execute(&mut *conn)
        .await
        .expect("to the org");
    let org_wide = resolve_one(&db, org, other_project, "GIT_TOKEN").await;
    assert_eq!(org_wide.project_id, None);
    assert!(secrets::open(&keyring, &org_wide).is_err());

    // Back in place, then renamed: a Git token must not become the LLM key.
    sqlx::query("update secrets set project_id = $2, name = 'LLM_KEY' where id = $1")
        .bind(meta.id)
        .bind(project.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("rename");
    let renamed = resolve_one(&db, org, project, "LLM_KEY").await;
    assert!(matches!(
        secrets::open(&keyring, &renamed),
        Err(cadenza_crypto::Error::Decrypt { .. })
    ));
}

/// A secret sealed in format 1, as builds before format 2 wrote it: org-wide, bound to this org,
/// secret id and version 1 only, its data key wrapped by `kek-legacy`.
const LEGACY_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const LEGACY_ORG: &str = "0191a000-0000-7000-8000-00000000000a";
const LEGACY_SECRET: &str = "0191a000-0000-7000-8000-00000000000c";
const LEGACY_SEALED: &str = "010a6b656b2d6c656761637955adf2bb7ee5a6309a1123e67f6c11bb240b665bc4ba18bb\
720fcf44429fb4cc38db06f9d6d87ab7cfccbfe51259b54d0e45ee46395a2713b63016c295d4f390568fea295bab1c09\
255adde205a758f14a791ae55db367fb403a1fc5c6e9a1d836608917deaa7209745f7c";

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test]
async fn a_format_1_secret_still_opens_and_the_rewrap_upgrades_it_to_the_full_binding() {
    let db = TestDatabase::create().await.expect("db");
    let keyring = ring(&[("kek-legacy", LEGACY_KEY)]);
    let org = uuid::Uuid::parse_str(LEGACY_ORG).expect("uuid");
    let secret_id = uuid::Uuid::parse_str(LEGACY_SECRET).expect("uuid");
    let mut conn = db.pool.acquire().await.expect("conn");
    sqlx::query("insert into orgs (id, slug, name) values ($1, 'legacy', 'Legacy')")
        .bind(org)
        .execute(&mut *conn)
        .await
        .expect("org");
    let project = projects::create(
        &mut conn,
        org.into(),
        "p",
        "p",
        &AgentSettings::with_image("img"),
        &Repository::default(),
    )
    .await
    .expect("project")
    .id;
    // The row as the migration to format 2 leaves it.
    sqlx::query(
        "insert into secrets (id, org_id, project_id, name, version, kek_id, sealed, format)
         values ($1, $2, null, 'LEGACY_TOKEN', 1, 'kek-legacy', $3, 1)",
    )
    .bind(secret_id)
    .bind(org)
    .bind(hex_bytes(LEGACY_SEALED))
    .execute(&mut *conn)
    .await
    .expect("legacy row");

    let legacy = resolve_one(&db, org.into(), project, "LEGACY_TOKEN").await;
    assert_eq!(
        secrets::open(&keyring, &legacy)
            .expect("a format 1 row still opens")
            .expose_secret(),
        "legacy-format-value"
    );
    // Format 1 does not bind the name: renamed, it opens all the same.
    let mut renamed = legacy.clone();
    renamed.name = "OTHER_NAME".into();
    assert!(secrets::open(&keyring, &renamed).is_ok());

    // The re-wrap upgrades it, though its key is already the active one.
    let report = secrets::rewrap_all(&db.pool, &keyring, 10, |_| {}, || false)
        .await
        .expect("rewrap");
    assert_eq!(report.progress.rewrapped, 1, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    let (format, first_byte): (i16, i32) =
        sqlx::query_as("select format, get_byte(sealed, 0) from secrets where id = $1")
            .bind(secret_id)
            .fetch_one(&mut *conn)
            .await
            .expect("row");
    assert_eq!((format, first_byte), (2, 2));

    let upgraded = resolve_one(&db, org.into(), project, "LEGACY_TOKEN").await;
    assert_eq!(
        secrets::open(&keyring, &upgraded)
            .expect("the upgraded row opens")
            .expose_secret(),
        "legacy-format-value"
    );
    let mut renamed = upgraded.clone();
    renamed.name = "OTHER_NAME".into();
    assert!(matches!(
        secrets::open(&keyring, &renamed),
        Err(cadenza_crypto::Error::Decrypt { .. })
    ));
    let mut moved = upgraded;
    moved.project_id = Some(project);
    assert!(secrets::open(&keyring, &moved).is_err());

    // Nothing is left to upgrade.
    let again = secrets::rewrap_all(&db.pool, &keyring, 10, |_| {}, || false)
        .await
        .expect("rewrap again");
    assert_eq!(again.progress.rewrapped, 0, "{again:?}");
}
