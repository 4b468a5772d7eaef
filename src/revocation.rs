//! Revocation reasons (RFC 5280 CRLReason) as the API names them: one
//! table for the service that takes them, the CLI that normalises what a
//! person types, and the CRL that encodes their codes.

/// RFC 5280 reason names as the API spells them, and their codes.
pub const REASONS: &[(&str, i32)] = &[
    ("unspecified", 0),
    ("keyCompromise", 1),
    ("caCompromise", 2),
    ("affiliationChanged", 3),
    ("superseded", 4),
    ("cessationOfOperation", 5),
    ("privilegeWithdrawn", 9),
];

/// The reason code for an API reason name ("" means unspecified).
pub fn reason_code(name: &str) -> Option<i32> {
    if name.is_empty() {
        return Some(0);
    }
    REASONS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// Every API reason name, comma-separated, for error messages.
pub fn reason_names() -> String {
    REASONS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A revocation reason as a person typed it (any case, camelCase,
/// kebab-case or snake_case) → its RFC 5280 name.
pub fn normalize_reason(input: &str) -> Result<&'static str, String> {
    let key: String = input
        .trim()
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    REASONS
        .iter()
        .map(|(n, _)| *n)
        .find(|r| r.to_ascii_lowercase() == key)
        .ok_or_else(|| {
            format!(
                "unknown revocation reason {input:?}; expected one of: {}",
                reason_names()
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn reason_names() {
        for (r, _) in REASONS {
            assert_eq!(normalize_reason(r).unwrap(), *r);
            assert_eq!(normalize_reason(&r.to_uppercase()).unwrap(), *r);
        }
        assert_eq!(normalize_reason("key-compromise").unwrap(), "keyCompromise");
        assert_eq!(normalize_reason("KeyCompromise").unwrap(), "keyCompromise");
        assert_eq!(
            normalize_reason("cessation_of_operation").unwrap(),
            "cessationOfOperation"
        );
        assert_eq!(
            normalize_reason("privilege-withdrawn").unwrap(),
            "privilegeWithdrawn"
        );
        assert_eq!(normalize_reason(" superseded ").unwrap(), "superseded");
        for bad in ["", "certificateHold", "removeFromCRL", "compromised"] {
            let e = normalize_reason(bad).unwrap_err();
            assert!(e.contains("unknown revocation reason"), "{e}");
            assert!(e.contains("keyCompromise, caCompromise"), "{e}");
        }
    }

    #[test]
    fn api_names_map_to_codes() {
        assert_eq!(reason_code(""), Some(0));
        assert_eq!(reason_code("KEYCOMPROMISE"), Some(1));
        assert_eq!(reason_code("privilegeWithdrawn"), Some(9));
        assert_eq!(reason_code("certificateHold"), None);
    }
}
