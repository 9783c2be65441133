//! Properties of sealed secrets that must hold for every value, key and binding.

use cadenza_crypto::{Aad, Error, KeyRing, SealedPart, SealedSecret, open, rewrap, seal};
use proptest::prelude::*;
use proptest::sample::Index;
use secrecy::{ExposeSecret as _, SecretString};
use uuid::Uuid;

const KEY_OLD: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_NEW: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn old_ring() -> KeyRing {
    KeyRing::from_spec(&format!("kek-old:{KEY_OLD}")).unwrap()
}

/// The middle of a rotation: the new key is active, the old one still decrypts.
fn rotating_ring() -> KeyRing {
    KeyRing::from_spec(&format!("kek-new:{KEY_NEW},kek-old:{KEY_OLD}")).unwrap()
}

fn new_ring() -> KeyRing {
    KeyRing::from_spec(&format!("kek-new:{KEY_NEW}")).unwrap()
}

fn any_aad() -> impl Strategy<Value = Aad> {
    (
        any::<u128>(),
        any::<Option<u128>>(),
        any::<u128>(),
        "[A-Z_][A-Z0-9_]{0,63}",
        any::<i32>(),
    )
        .prop_map(|(org, project, secret, name, version)| {
            Aad::new(
                Uuid::from_u128(org),
                project.map(Uuid::from_u128),
                Uuid::from_u128(secret),
                &name,
                version,
            )
        })
}

/// The same binding with exactly one field changed.
fn one_field_changed(aad: Aad, field: usize, replacement: u128) -> Aad {
    match field {
        0 => Aad {
            org_id: Uuid::from_u128(replacement),
            ..aad
        },
        1 => Aad {
            secret_id: Uuid::from_u128(replacement),
            ..aad
        },
        2 => Aad {
            project_id: (replacement % 2 == 1).then(|| Uuid::from_u128(replacement)),
            ..aad
        },
        3 => Aad {
            name: format!("N{replacement:X}"),
            ..aad
        },
        _ => Aad {
            version: replacement as i32,
            ..aad
        },
    }
}

fn flip_bit(bytes: &mut [u8], bit: Index) {
    let bit = bit.index(bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

proptest! {
    #[test]
    fn any_value_opens_to_itself(value in any::<String>(), aad in any_aad()) {
        let ring = old_ring();
        let sealed = seal(&ring, &aad, &SecretString::from(value.as_str())).unwrap();
        let opened = open(&ring, &aad, &sealed).unwrap();
        prop_assert_eq!(opened.expose_secret(), value.as_str());
        let stored = SealedSecret::from_bytes(&sealed.to_bytes()).unwrap();
        let opened = open(&ring, &aad, &stored).unwrap();
        prop_assert_eq!(opened.expose_secret(), value.as_str());
    }

    #[test]
    fn any_flipped_bit_in_a_nonce_or_ciphertext_fails_to_decrypt(
        value in ".{0,40}",
        aad in any_aad(),
        part in 0..4_usize,
        bit in any::<Index>(),
    ) {
        let ring = old_ring();
        let sealed = seal(&ring, &aad, &SecretString::from(value)).unwrap();
        let mut wrapped_dek = sealed.wrapped_dek().to_vec();
        let mut dek_nonce = sealed.dek_nonce().to_vec();
        let mut ciphertext = sealed.ciphertext().to_vec();
        let mut nonce = sealed.nonce().to_vec();
        let (target, layer) = match part {
            0 => (&mut wrapped_dek, SealedPart::DataKey),
            1 => (&mut dek_nonce, SealedPart::DataKey),
            2 => (&mut ciphertext, SealedPart::Payload),
            _ => (&mut nonce, SealedPart::Payload),
        };
        flip_bit(target, bit);
        let tampered =
            SealedSecret::from_parts(sealed.kek_id(), &wrapped_dek, &dek_nonce, &ciphertext, &nonce)
                .unwrap();
        let opened = open(&ring, &aad, &tampered);
        prop_assert!(
            matches!(opened, Err(Error::Decrypt { what }) if what == layer),
            "expected a {layer} failure, got {opened:?}"
        );
        if layer == SealedPart::DataKey {
            let rewrapped = rewrap(&rotating_ring(), &aad, &tampered);
            prop_assert!(matches!(rewrapped, Err(Error::Decrypt { .. })), "{:?}", rewrapped);
        }
    }

    #[test]
    fn any_flipped_bit_in_the_stored_bytes_never_opens(
        value in ".{0,40}",
        aad in any_aad(),
        bit in any::<Index>(),
    ) {
        let ring = rotating_ring();
        let mut bytes = seal(&ring, &aad, &SecretString::from(value)).unwrap().to_bytes();
        flip_bit(&mut bytes, bit);
        let opened = SealedSecret::from_bytes(&bytes).and_then(|sealed| open(&ring, &aad, &sealed));
        prop_assert!(opened.is_err());
    }

    #[test]
    fn another_org_project_secret_name_or_version_fails_to_decrypt(
        value in ".{0,40}",
        aad in any_aad(),
        field in 0..5_usize,
        replacement in any::<u128>(),
    ) {
        let other = one_field_changed(aad.clone(), field, replacement);
        prop_assume!(other != aad);
        let ring = old_ring();
        let sealed = seal(&ring, &aad, &SecretString::from(value)).unwrap();
        let opened = open(&ring, &other, &sealed);
        prop_assert!(
            matches!(opened, Err(Error::Decrypt { what: SealedPart::DataKey })),
            "{:?}",
            opened
        );
    }

    #[test]
    fn a_rewrapped_secret_names_the_active_key_and_opens_to_the_original(
        value in any::<String>(),
        aad in any_aad(),
    ) {
        let sealed = seal(&old_ring(), &aad, &SecretString::from(value.as_str())).unwrap();
        let rewrapped = rewrap(&rotating_ring(), &aad, &sealed).unwrap();
        prop_assert_eq!(rewrapped.kek_id(), "kek-new");
        prop_assert_eq!(rewrapped.ciphertext(), sealed.ciphertext());
        // Once every row is re-wrapped, the old key can go.
        let opened = open(&new_ring(), &aad, &rewrapped).unwrap();
        prop_assert_eq!(opened.expose_secret(), value.as_str());
    }
}
