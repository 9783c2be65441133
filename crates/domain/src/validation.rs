//! Input rules shared by every entry point (HTTP today, Linear triggers later).

/// Largest accepted task prompt, in bytes.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
/// Largest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("`{field}` must not be empty")]
    Empty { field: &'static str },
    #[error("`{field}` is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("`{field}` contains control characters")]
    ControlCharacters { field: &'static str },
}

impl ValidationError {
    pub fn field(&self) -> &'static str {
        match self {
            ValidationError::Empty { field }
            | ValidationError::TooLong { field, .. }
            | ValidationError::ControlCharacters { field } => field,
        }
    }
}

pub fn validate_prompt(prompt: &str) -> Result<(), ValidationError> {
    if prompt.trim().is_empty() {
        return Err(ValidationError::Empty { field: "prompt" });
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(ValidationError::TooLong {
            field: "prompt",
            max: MAX_PROMPT_BYTES,
        });
    }
    Ok(())
}

pub fn validate_idempotency_key(key: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "idempotency_key";
    if key.is_empty() {
        return Err(ValidationError::Empty { field: FIELD });
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ValidationError::TooLong {
            field: FIELD,
            max: MAX_IDEMPOTENCY_KEY_BYTES,
        });
    }
    if key.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacters { field: FIELD });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_must_have_content_and_a_bounded_size() {
        assert!(validate_prompt("$ echo hi").is_ok());
        assert_eq!(
            validate_prompt("  \n"),
            Err(ValidationError::Empty { field: "prompt" })
        );
        let huge = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert!(matches!(
            validate_prompt(&huge),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn idempotency_keys_are_printable_and_bounded() {
        assert!(validate_idempotency_key("abc-123").is_ok());
        assert!(validate_idempotency_key("").is_err());
        assert!(validate_idempotency_key("a\nb").is_err());
        assert!(validate_idempotency_key(&"k".repeat(256)).is_err());
    }
}
