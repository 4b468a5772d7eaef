//! PEM as other tools write it. RFC 7468 §3 asks parsers to be lax about
//! what generators are strict about: Python's `base64.encodebytes` and Java's
//! MIME encoder wrap at 76 columns, Windows tools end lines with CRLF, and
//! copy-paste leaves trailing blanks; OpenSSL reads all of these. The strict
//! decoder underneath (pem-rfc7468, through `der`) accepts only 64-column
//! lines, so every PEM input — public keys, CSRs, CA chains — goes through
//! [`decode_all`] or [`decode_one`], which rewrite each block into the strict
//! form and let that decoder check the label and the base64 itself.
//!
//! Lax only where the RFC allows it: explanatory text before a `-----BEGIN`
//! line (RFC 7468 §2), any line length, CRLF, CR or LF line ends, blanks
//! inside the base64.
//! Refused: headers (`Proc-Type:`, `DEK-Info:`: an encrypted RFC 1421 key is
//! not what any field here takes), a `-----BEGIN` without its matching
//! `-----END`, text after the last block, bad base64, and — in
//! [`decode_one`] — more than one block.

use der::pem;

/// Base64 characters per line in the strict form (RFC 7468 §2).
const STRICT_WIDTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    #[error("no -----BEGIN line")]
    NoBlock,
    #[error("{0} PEM blocks where one is expected")]
    Many(usize),
    #[error("-----BEGIN {0}----- has no -----END {0}----- line")]
    Unterminated(String),
    #[error("-----BEGIN {begin}----- ends with -----END {end}-----")]
    Mismatch { begin: String, end: String },
    #[error("unexpected boundary line {0:?}")]
    Boundary(String),
    #[error(
        "the {0} block has a header line (\"Name: value\"); RFC 7468 PEM has none (an encrypted key?)"
    )]
    Header(String),
    #[error("text after the last -----END line")]
    Trailing,
    #[error("the {label} block is not valid PEM: {reason}")]
    Invalid { label: String, reason: String },
}

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

/// Exactly one block (explanatory text before it is allowed).
pub fn decode_one(text: &[u8]) -> Result<Block, PemError> {
    let mut blocks = decode_all(text)?;
    match blocks.len() {
        0 => Err(PemError::NoBlock),
        1 => Ok(blocks.remove(0)),
        n => Err(PemError::Many(n)),
    }
}

/// Every block in `text`, in order; none for text with no `-----BEGIN` line
/// at all (the caller decides whether that is an error).
pub fn decode_all(text: &[u8]) -> Result<Vec<Block>, PemError> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    // The open block's label and base64 so far.
    let mut open: Option<(String, String)> = None;
    // Whether a line that is not blank came after the last END line.
    let mut trailing = false;
    // RFC 7468's eol is CRLF, CR or LF; a CRLF makes an extra empty line,
    // which is ignored like any blank line.
    for line in text.split(['\n', '\r']) {
        let line = line.trim_matches(is_blank);
        if let Some((label, body)) = open.as_mut() {
            if let Some(end) = boundary(line, "-----END ") {
                if end != label {
                    return Err(PemError::Mismatch {
                        begin: label.clone(),
                        end: end.to_owned(),
                    });
                }
                let (label, body) = std::mem::take(&mut open).unwrap_or_default();
                blocks.push(strict_decode(label, &body)?);
            } else if line.starts_with("-----") {
                return Err(PemError::Boundary(line.to_owned()));
            } else if line.contains(':') {
                return Err(PemError::Header(label.clone()));
            } else {
                body.extend(line.chars().filter(|c| !is_blank(*c)));
            }
        } else if let Some(begin) = boundary(line, "-----BEGIN ") {
            open = Some((begin.to_owned(), String::new()));
            trailing = false;
        } else if line.starts_with("-----") {
            return Err(PemError::Boundary(line.to_owned()));
        } else if !line.is_empty() {
            // Explanatory text, if a block follows; garbage if none does.
            trailing = true;
        }
    }
    if let Some((label, _)) = open {
        return Err(PemError::Unterminated(label));
    }
    if trailing && !blocks.is_empty() {
        return Err(PemError::Trailing);
    }
    Ok(blocks)
}

/// RFC 7468's W production (whitespace) as it appears within a line.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c')
}

/// The label of `-----BEGIN LABEL-----` (with `prefix` "-----BEGIN ").
fn boundary<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix("-----")
}

/// Rewrites one block in the strict form and decodes it there, so that the
/// label and the base64 are judged by pem-rfc7468.
fn strict_decode(label: String, base64: &str) -> Result<Block, PemError> {
    let mut strict = String::with_capacity(base64.len() + base64.len() / STRICT_WIDTH + 64);
    strict.push_str("-----BEGIN ");
    strict.push_str(&label);
    strict.push_str("-----\n");
    // `base64` holds no whitespace; a non-ASCII byte makes it invalid anyway,
    // and splitting on bytes could cut a character in two.
    if !base64.is_ascii() {
        return Err(PemError::Invalid {
            label,
            reason: "a non-ASCII character in the base64".into(),
        });
    }
    for chunk in base64.as_bytes().chunks(STRICT_WIDTH) {
        strict.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        strict.push('\n');
    }
    strict.push_str("-----END ");
    strict.push_str(&label);
    strict.push_str("-----\n");
    match pem::decode_vec(strict.as_bytes()) {
        Ok((_, der)) => Ok(Block { label, der }),
        Err(e) => Err(PemError::Invalid {
            label,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const DER: &[u8] = &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00, 0xc5];

    /// `der` (long enough to need several lines) as `width`-column base64
    /// joined by `eol`.
    fn wrapped(label: &str, der: &[u8], width: usize, eol: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----{eol}");
        for chunk in b64.as_bytes().chunks(width) {
            s.push_str(std::str::from_utf8(chunk).unwrap());
            s.push_str(eol);
        }
        s.push_str(&format!("-----END {label}-----{eol}"));
        s
    }

    fn long_der() -> Vec<u8> {
        (0..300u32).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn any_line_length_and_line_ending_is_read() {
        let der = long_der();
        for width in [64, 76, 1, 3, 63, 65, 1000] {
            for eol in ["\n", "\r\n", "\r", " \n", "\t\r\n"] {
                let text = wrapped("PUBLIC KEY", &der, width, eol);
                let block = decode_one(text.as_bytes())
                    .unwrap_or_else(|e| panic!("width {width}, eol {eol:?}: {e}"));
                assert_eq!(block.label, "PUBLIC KEY");
                assert_eq!(block.der, der);
            }
        }
    }

    #[test]
    fn python_encodebytes_output_is_read() {
        // base64.encodebytes: 76-column lines, each ending in "\n".
        let der = long_der();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut body = String::new();
        for chunk in b64.as_bytes().chunks(76) {
            body.push_str(std::str::from_utf8(chunk).unwrap());
            body.push('\n');
        }
        let text = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
        );
        assert_eq!(decode_one(text.as_bytes()).unwrap().der, der);
    }

    #[test]
    fn blanks_around_and_inside_are_ignored() {
        let text = format!(
            "\n\n  {}  \n\n",
            wrapped("PUBLIC KEY", DER, 8, "  \r\n").replace("-----\r\n", "-----\r\n\r\n")
        );
        assert_eq!(decode_one(text.as_bytes()).unwrap().der, DER);
        // Blanks inside a line of base64 (RFC 7468's laxbase64text).
        let b64 = base64::engine::general_purpose::STANDARD.encode(DER);
        let spaced: String = b64.chars().flat_map(|c| [c, ' ']).collect();
        let text = format!("-----BEGIN X-----\n{spaced}\n-----END X-----");
        assert_eq!(decode_one(text.as_bytes()).unwrap().der, DER);
    }

    #[test]
    fn explanatory_text_before_a_block_is_allowed() {
        let text = format!(
            "subject=CN = example\nissuer=CN = example\n{}",
            wrapped("CERTIFICATE", DER, 64, "\n")
        );
        assert_eq!(decode_one(text.as_bytes()).unwrap().der, DER);
    }

    #[test]
    fn chains_keep_their_order() {
        let a = wrapped("CERTIFICATE", DER, 76, "\r\n");
        let b = wrapped("CERTIFICATE", &long_der(), 64, "\n");
        let blocks = decode_all(format!("{a}\n{b}").as_bytes()).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].der, DER);
        assert_eq!(blocks[1].der, long_der());
        assert_eq!(decode_all(b"\n \n").unwrap(), vec![]);
    }

    #[test]
    fn what_is_still_refused() {
        let one = wrapped("PUBLIC KEY", DER, 64, "\n");
        let e = |t: &str| decode_one(t.as_bytes()).unwrap_err();
        assert_eq!(e(""), PemError::NoBlock);
        assert_eq!(e("hello"), PemError::NoBlock);
        assert_eq!(e(&format!("{one}{one}")), PemError::Many(2));
        assert_eq!(e(&format!("{one}trailing garbage\n")), PemError::Trailing);
        assert_eq!(e(&format!("{one}-----END PUBLIC KEY-----")), {
            PemError::Boundary("-----END PUBLIC KEY-----".into())
        });
        assert_eq!(
            e(&one.replace("-----END PUBLIC KEY-----\n", "")),
            PemError::Unterminated("PUBLIC KEY".into())
        );
        assert_eq!(
            e(&one.replace("END PUBLIC KEY", "END CERTIFICATE")),
            PemError::Mismatch {
                begin: "PUBLIC KEY".into(),
                end: "CERTIFICATE".into()
            }
        );
        assert_eq!(
            e(&one.replace(
                "-----\n",
                "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n"
            )),
            PemError::Header("PUBLIC KEY".into())
        );
        assert_eq!(
            e(&one.replacen("-----\n", "-----\n-----BEGIN X-----\n", 1)),
            PemError::Boundary("-----BEGIN X-----".into())
        );
        for bad in ["MIIB!AAA", "MIIBé", "A", "AAAA=AAA", "===="] {
            let t = format!("-----BEGIN PUBLIC KEY-----\n{bad}\n-----END PUBLIC KEY-----\n");
            assert!(
                matches!(e(&t), PemError::Invalid { .. }),
                "{bad:?} accepted: {:?}",
                decode_one(t.as_bytes())
            );
        }
        assert!(matches!(
            e("-----BEGIN a\u{7f}b-----\nAAAA\n-----END a\u{7f}b-----"),
            PemError::Invalid { .. }
        ));
    }

    #[test]
    fn strict_output_reads_back() {
        let text = pem::encode_string("PUBLIC KEY", pem::LineEnding::CRLF, &long_der()).unwrap();
        assert_eq!(decode_one(text.as_bytes()).unwrap().der, long_der());
    }
}
