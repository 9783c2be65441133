//! ID token claim checks (OpenID Connect Core §3.1.3.7), after the signature has been verified.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::jwt::{numeric_date, string_claim};

use super::VerifiedIdentity;

/// Clock skew tolerated between the provider and us for `exp` and `nbf`.
pub const CLOCK_LEEWAY_SECONDS: i64 = 60;

/// What a valid ID token must say for this login.
pub(crate) struct Expectations<'a> {
    /// The issuer string exactly as the discovery document spells it.
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) nonce: &'a str,
    pub(crate) now: i64,
}

pub(crate) fn check_claims(
    claims: Map<String, Value>,
    expected: &Expectations<'_>,
) -> Result<VerifiedIdentity> {
    let issuer = string_claim(&claims, "iss").ok().flatten();
    if issuer != Some(expected.issuer) {
        return Err(Error::WrongIssuer {
            expected: expected.issuer.to_owned(),
            actual: issuer.map(str::to_owned),
        });
    }

    check_audience(&claims, expected.client_id)?;

    let expires_at =
        numeric_date(&claims, "exp")?.ok_or_else(|| Error::malformed("exp is missing"))?;
    if expected.now > expires_at.saturating_add(CLOCK_LEEWAY_SECONDS) {
        return Err(Error::Expired {
            expired_at: expires_at,
        });
    }
    numeric_date(&claims, "iat")?.ok_or_else(|| Error::malformed("iat is missing"))?;
    if let Some(not_before) = numeric_date(&claims, "nbf")?
        && not_before > expected.now.saturating_add(CLOCK_LEEWAY_SECONDS)
    {
        return Err(Error::NotYetValid { not_before });
    }

    if string_claim(&claims, "nonce").ok().flatten() != Some(expected.nonce) {
        return Err(Error::NonceMismatch);
    }

    let subject = match string_claim(&claims, "sub")? {
        Some(subject) if !subject.is_empty() => subject.to_owned(),
        _ => return Err(Error::malformed("sub is missing or empty")),
    };
    let email = string_claim(&claims, "email")
        .ok()
        .flatten()
        .map(str::to_owned);
    // Some providers (older Cognito pools, some SAML bridges) send the boolean as a string.
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(verified)) => *verified,
        Some(Value::String(verified)) => verified.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let name = string_claim(&claims, "name")
        .ok()
        .flatten()
        .map(str::to_owned);
    Ok(VerifiedIdentity {
        issuer: expected.issuer.to_owned(),
        subject,
        email,
        email_verified,
        name,
        claims: Value::Object(claims),
    })
}

fn check_audience(claims: &Map<String, Value>, client_id: &str) -> Result<()> {
    let wrong = |reason: String| Error::WrongAudience {
        expected: client_id.to_owned(),
        reason,
    };
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(audience)) => vec![audience.as_str()],
        Some(Value::Array(audiences)) => audiences
            .iter()
            .map(|audience| {
                audience
                    .as_str()
                    .ok_or_else(|| wrong("aud holds a non-string".into()))
            })
            .collect::<Result<_>>()?,
        None | Some(Value::Null) => return Err(wrong("aud is missing".into())),
        Some(_) => return Err(wrong("aud is neither a string nor an array".into())),
    };
    if !audiences.contains(&client_id) {
        return Err(wrong(format!("aud is {audiences:?}")));
    }
    // §3.1.3.7 (4, 5): another party named alongside us must not be the one the token was
    // issued to, or that party could replay its token here.
    let authorized_party =
        string_claim(claims, "azp").map_err(|_| wrong("azp is not a string".into()))?;
    match authorized_party {
        Some(party) if party != client_id => Err(wrong(format!("azp is {party:?}"))),
        None if audiences.len() > 1 => Err(wrong("several audiences but no azp".into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_750_000_000;

    fn expectations() -> Expectations<'static> {
        Expectations {
            issuer: "https://idp.example.com",
            client_id: "cadenza",
            nonce: "n-0S6_WzA2Mj",
            now: NOW,
        }
    }

    fn valid_claims() -> Map<String, Value> {
        let Value::Object(claims) = json!({
            "iss": "https://idp.example.com",
            "sub": "248289761001",
            "aud": "cadenza",
            "exp": NOW + 300,
            "iat": NOW,
            "nonce": "n-0S6_WzA2Mj",
            "email": "jane@example.com",
            "email_verified": true,
            "name": "Jane Doe",
        }) else {
            unreachable!()
        };
        claims
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Result<VerifiedIdentity> {
        let mut claims = valid_claims();
        change(&mut claims);
        check_claims(claims, &expectations())
    }

    #[test]
    fn valid_claims_become_an_identity() {
        let identity = with(|_| {}).unwrap();
        assert_eq!(identity.issuer, "https://idp.example.com");
        assert_eq!(identity.subject, "248289761001");
        assert_eq!(identity.email.as_deref(), Some("jane@example.com"));
        assert!(identity.email_verified);
        assert_eq!(identity.name.as_deref(), Some("Jane Doe"));
        assert_eq!(identity.claims["nonce"], "n-0S6_WzA2Mj");
    }

    #[test]
    fn issuer_must_match_exactly() {
        for issuer in [
            json!("https://idp.example.com/"),
            json!("https://evil.example.com"),
            json!(42),
        ] {
            assert!(matches!(
                with(|claims| {
                    claims.insert("iss".into(), issuer);
                }),
                Err(Error::WrongIssuer { .. })
            ));
        }
        assert!(matches!(
            with(|claims| {
                claims.remove("iss");
            }),
            Err(Error::WrongIssuer { actual: None, .. })
        ));
    }

    #[test]
    fn audience_must_contain_the_client_and_azp_must_name_it_when_there_are_several() {
        let audience = |aud: Value, azp: Option<&str>| {
            with(|claims| {
                claims.insert("aud".into(), aud);
                if let Some(azp) = azp {
                    claims.insert("azp".into(), json!(azp));
                }
            })
        };
        assert!(audience(json!(["cadenza"]), None).is_ok());
        assert!(audience(json!(["cadenza", "other"]), Some("cadenza")).is_ok());
        for (aud, azp) in [
            (json!("other"), None),
            (json!(["other"]), None),
            (json!(["cadenza", "other"]), None),
            (json!(["cadenza", "other"]), Some("other")),
            (json!("cadenza"), Some("other")),
            (json!(["cadenza", 7]), None),
            (json!({"aud": "cadenza"}), None),
            (Value::Null, None),
        ] {
            assert!(
                matches!(audience(aud.clone(), azp), Err(Error::WrongAudience { .. })),
                "{aud} {azp:?}"
            );
        }
    }

    #[test]
    fn expiry_allows_a_minute_of_clock_skew_and_no_more() {
        let expiring_at = |exp: i64| {
            with(|claims| {
                claims.insert("exp".into(), json!(exp));
            })
        };
        assert!(expiring_at(NOW - CLOCK_LEEWAY_SECONDS).is_ok());
        assert!(matches!(
            expiring_at(NOW - CLOCK_LEEWAY_SECONDS - 1),
            Err(Error::Expired { .. })
        ));
        assert!(matches!(
            with(|claims| {
                claims.remove("exp");
            }),
            Err(Error::MalformedToken { .. })
        ));
    }

    #[test]
    fn iat_is_required_and_a_future_nbf_is_refused() {
        assert!(matches!(
            with(|claims| {
                claims.remove("iat");
            }),
            Err(Error::MalformedToken { .. })
        ));
        assert!(matches!(
            with(|claims| {
                claims.insert("nbf".into(), json!(NOW + CLOCK_LEEWAY_SECONDS + 10));
            }),
            Err(Error::NotYetValid { .. })
        ));
        assert!(
            with(|claims| {
                claims.insert("nbf".into(), json!(NOW));
            })
            .is_ok()
        );
    }

    #[test]
    fn nonce_must_be_present_and_equal() {
        for nonce in [Some(json!("other")), Some(json!(1)), None] {
            assert!(matches!(
                with(|claims| {
                    match nonce {
                        Some(nonce) => claims.insert("nonce".into(), nonce),
                        None => claims.remove("nonce"),
                    };
                }),
                Err(Error::NonceMismatch)
            ));
        }
    }

    #[test]
    fn subject_is_required_and_profile_claims_are_optional() {
        assert!(matches!(
            with(|claims| {
                claims.insert("sub".into(), json!(""));
            }),
            Err(Error::MalformedToken { .. })
        ));
        let bare = with(|claims| {
            claims.remove("email");
            claims.remove("email_verified");
            claims.remove("name");
        })
        .unwrap();
        assert_eq!(bare.email, None);
        assert!(!bare.email_verified);
        assert_eq!(bare.name, None);
        let stringly = with(|claims| {
            claims.insert("email_verified".into(), json!("true"));
        })
        .unwrap();
        assert!(stringly.email_verified);
    }
}
