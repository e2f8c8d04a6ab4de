//! Pure parser for fixed-newstyle client options (handshake phase).
//!
//! [`parse_option`] turns the option code and its data (already read in full,
//! and bounded by the caller) into a [`ClientOption`] that borrows from the
//! data. It never panics and never allocates, whatever the bytes; every
//! string is checked against the spec's rules ("Conventions": UTF-8, no NUL,
//! at most 4096 bytes). It is exposed for fuzzing; the server itself is the
//! only other user.

use crate::proto::{self, MAX_STRING_LEN};

/// A decoded client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOption<'a> {
    /// `NBD_OPT_EXPORT_NAME`: enter transmission with this export.
    ExportName(&'a str),
    /// `NBD_OPT_ABORT`: soft disconnect (any data is ignored, per spec).
    Abort,
    /// `NBD_OPT_LIST`: list the exports.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest<'a>),
    /// `NBD_OPT_GO`.
    Go(InfoRequest<'a>),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest<'a>),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest<'a>),
    /// `NBD_OPT_EXTENDED_HEADERS` (data, if any, is not inspected).
    ExtendedHeaders,
    /// Any other option code; answered with `NBD_REP_ERR_UNSUP`.
    Unknown(u32),
}

/// The body of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the list of
/// requested information types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name ("" is the default export).
    pub name: &'a str,
    /// The raw list of 16-bit information types (even length, validated).
    requests: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// The requested information types, in client order.
    pub fn info_types(&self) -> impl Iterator<Item = u16> + 'a {
        self.requests
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    /// True if the client asked for information type `info`.
    pub fn wants(&self, info: u16) -> bool {
        self.info_types().any(|t| t == info)
    }
}

/// The body of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// Export name the contexts are for.
    pub name: &'a str,
    /// Number of queries (validated against the data).
    count: u32,
    /// The raw, validated query list: `count` times (u32 length, string).
    queries: &'a [u8],
}

impl<'a> MetaContextRequest<'a> {
    /// Number of queries the client sent.
    pub fn query_count(&self) -> u32 {
        self.count
    }

    /// The queries, in client order. Each was validated by [`parse_option`]
    /// (UTF-8, no NUL, at most 4096 bytes, contains a `namespace:` prefix).
    pub fn queries(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.queries;
        std::iter::from_fn(move || {
            let (q, tail) = take_string(rest).ok()?;
            rest = tail;
            Some(q)
        })
    }
}

/// Why option data could not be parsed; answered with `NBD_REP_ERR_INVALID`
/// (or, for `NBD_OPT_EXPORT_NAME`, which cannot report errors, by closing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The option must not carry data but did.
    #[error("this option takes no data")]
    UnexpectedData,
    /// A length field points past the end of the option data.
    #[error("option data is truncated")]
    Truncated,
    /// Bytes were left over after the last field.
    #[error("option data has trailing bytes")]
    TrailingData,
    /// A string is longer than the protocol's 4096-byte limit.
    #[error("string longer than 4096 bytes")]
    StringTooLong,
    /// A string is not UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
    /// A string contains a NUL byte.
    #[error("string contains a NUL byte")]
    ContainsNul,
    /// The information request list has an odd length.
    #[error("information request list does not match its count")]
    BadInfoList,
    /// A metadata context query lacks the mandatory `namespace:` prefix.
    #[error("metadata context query must start with a namespace and a colon")]
    BadQuery,
}

/// Parse one option's data. `data` is exactly the option data the client
/// announced (the caller bounds its size before reading it).
pub fn parse_option(code: u32, data: &[u8]) -> Result<ClientOption<'_>, OptionError> {
    match code {
        proto::OPT_EXPORT_NAME => Ok(ClientOption::ExportName(check_string(data)?)),
        // Spec: "a server SHOULD ignore any data sent by the client rather
        // than rejecting the request as invalid".
        proto::OPT_ABORT => Ok(ClientOption::Abort),
        proto::OPT_LIST => no_data(data, ClientOption::List),
        proto::OPT_STARTTLS => no_data(data, ClientOption::StartTls),
        proto::OPT_INFO => Ok(ClientOption::Info(parse_info(data)?)),
        proto::OPT_GO => Ok(ClientOption::Go(parse_info(data)?)),
        proto::OPT_STRUCTURED_REPLY => no_data(data, ClientOption::StructuredReply),
        proto::OPT_LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(parse_meta(data)?)),
        proto::OPT_SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(parse_meta(data)?)),
        proto::OPT_EXTENDED_HEADERS => Ok(ClientOption::ExtendedHeaders),
        other => Ok(ClientOption::Unknown(other)),
    }
}

fn no_data<'a>(data: &[u8], opt: ClientOption<'a>) -> Result<ClientOption<'a>, OptionError> {
    if data.is_empty() {
        Ok(opt)
    } else {
        Err(OptionError::UnexpectedData)
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: u32 name length, name, u16 count,
/// count × u16 information types. The name length "MUST be no larger than
/// the option data length - 6"; everything must add up exactly.
fn parse_info(data: &[u8]) -> Result<InfoRequest<'_>, OptionError> {
    let (name, rest) = take_string(data)?;
    let (count, rest) = take_u16(rest)?;
    let expected = usize::from(count) * 2;
    if rest.len() < expected {
        return Err(OptionError::BadInfoList);
    }
    if rest.len() > expected {
        return Err(OptionError::TrailingData);
    }
    Ok(InfoRequest {
        name,
        requests: rest,
    })
}

/// Meta context data: u32 name length, name, u32 query count, then per
/// query u32 length and string. A length reaching past the data is
/// "syntactically invalid" and MUST fail with `NBD_REP_ERR_INVALID`.
fn parse_meta(data: &[u8]) -> Result<MetaContextRequest<'_>, OptionError> {
    let (name, rest) = take_string(data)?;
    let (count, queries) = take_u32(rest)?;
    let mut cursor = queries;
    for _ in 0..count {
        let (query, tail) = take_string(cursor)?;
        // "The syntax of this query is implementation-defined, except that it
        // MUST start with a namespace and a colon"; a missing namespace is
        // semantically invalid, which the server MAY reject.
        match query.find(':') {
            Some(i) if i > 0 => {}
            _ => return Err(OptionError::BadQuery),
        }
        cursor = tail;
    }
    if !cursor.is_empty() {
        return Err(OptionError::TrailingData);
    }
    Ok(MetaContextRequest {
        name,
        count,
        queries,
    })
}

fn take_u16(data: &[u8]) -> Result<(u16, &[u8]), OptionError> {
    match data.split_first_chunk::<2>() {
        Some((b, rest)) => Ok((u16::from_be_bytes(*b), rest)),
        None => Err(OptionError::Truncated),
    }
}

fn take_u32(data: &[u8]) -> Result<(u32, &[u8]), OptionError> {
    match data.split_first_chunk::<4>() {
        Some((b, rest)) => Ok((u32::from_be_bytes(*b), rest)),
        None => Err(OptionError::Truncated),
    }
}

/// A u32-length-prefixed string.
fn take_string(data: &[u8]) -> Result<(&str, &[u8]), OptionError> {
    let (len, rest) = take_u32(data)?;
    let len = usize::try_from(len).map_err(|_| OptionError::Truncated)?;
    if len > rest.len() {
        // Check the spec limit first so a huge length gets the clearer error.
        return Err(if len > MAX_STRING_LEN {
            OptionError::StringTooLong
        } else {
            OptionError::Truncated
        });
    }
    let (s, rest) = rest.split_at(len);
    Ok((check_string(s)?, rest))
}

/// Validate a protocol string: at most 4096 bytes, UTF-8, no NUL.
pub(crate) fn check_string(bytes: &[u8]) -> Result<&str, OptionError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(OptionError::StringTooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| OptionError::NotUtf8)?;
    if s.contains('\0') {
        return Err(OptionError::ContainsNul);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    fn info_data(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta_data(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q);
        }
        d
    }

    #[test]
    fn export_name_accepts_empty_and_utf8() {
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b""),
            Ok(ClientOption::ExportName(""))
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, "vol/é".as_bytes()),
            Ok(ClientOption::ExportName("vol/é"))
        );
    }

    #[test]
    fn export_name_rejects_bad_strings() {
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, &[0xff, 0xfe]),
            Err(OptionError::NotUtf8)
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, b"a\0b"),
            Err(OptionError::ContainsNul)
        );
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, &[b'a'; 4097]),
            Err(OptionError::StringTooLong)
        );
        assert!(parse_option(OPT_EXPORT_NAME, &[b'a'; 4096]).is_ok());
    }

    #[test]
    fn no_data_options() {
        assert_eq!(parse_option(OPT_LIST, b""), Ok(ClientOption::List));
        assert_eq!(
            parse_option(OPT_LIST, b"x"),
            Err(OptionError::UnexpectedData)
        );
        assert_eq!(
            parse_option(OPT_STRUCTURED_REPLY, b""),
            Ok(ClientOption::StructuredReply)
        );
        assert_eq!(
            parse_option(OPT_STRUCTURED_REPLY, b"\0"),
            Err(OptionError::UnexpectedData)
        );
        assert_eq!(
            parse_option(OPT_STARTTLS, b"tls"),
            Err(OptionError::UnexpectedData)
        );
        // ABORT ignores data.
        assert_eq!(parse_option(OPT_ABORT, b"junk"), Ok(ClientOption::Abort));
        assert_eq!(
            parse_option(OPT_EXTENDED_HEADERS, b""),
            Ok(ClientOption::ExtendedHeaders)
        );
        assert_eq!(parse_option(4, b""), Ok(ClientOption::Unknown(4)));
        assert_eq!(
            parse_option(0xdead_beef, b"whatever"),
            Ok(ClientOption::Unknown(0xdead_beef))
        );
    }

    #[test]
    fn info_and_go() {
        let d = info_data(b"disk", &[INFO_NAME, INFO_BLOCK_SIZE]);
        let Ok(ClientOption::Go(req)) = parse_option(OPT_GO, &d) else {
            panic!("expected GO");
        };
        assert_eq!(req.name, "disk");
        assert_eq!(
            req.info_types().collect::<Vec<_>>(),
            vec![INFO_NAME, INFO_BLOCK_SIZE]
        );
        assert!(req.wants(INFO_BLOCK_SIZE));
        assert!(!req.wants(INFO_DESCRIPTION));

        let d = info_data(b"", &[]);
        let Ok(ClientOption::Info(req)) = parse_option(OPT_INFO, &d) else {
            panic!("expected INFO");
        };
        assert_eq!(req.name, "");
        assert_eq!(req.info_types().count(), 0);
    }

    #[test]
    fn info_rejects_malformed() {
        // Empty data: not even a name length.
        assert_eq!(parse_option(OPT_GO, b""), Err(OptionError::Truncated));
        // Name length beyond the data.
        let mut d = info_data(b"disk", &[]);
        d[3] = 200;
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::Truncated));
        // Name length far beyond the data and the string limit.
        d[0] = 0xff;
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::StringTooLong));
        // Missing count.
        let mut d = info_data(b"disk", &[]);
        d.truncate(d.len() - 2);
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::Truncated));
        // Count larger than the list.
        let mut d = info_data(b"disk", &[INFO_NAME]);
        let n = d.len();
        d[n - 3] = 2;
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::BadInfoList));
        // Trailing byte.
        let mut d = info_data(b"disk", &[INFO_NAME]);
        d.push(0);
        assert_eq!(parse_option(OPT_INFO, &d), Err(OptionError::TrailingData));
        // Name too long (4097 bytes, fully present).
        let d = info_data(&[b'n'; 4097], &[]);
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::StringTooLong));
        // Invalid UTF-8 name.
        let d = info_data(&[0xc3], &[]);
        assert_eq!(parse_option(OPT_GO, &d), Err(OptionError::NotUtf8));
    }

    #[test]
    fn meta_context_queries() {
        let d = meta_data(b"disk", &[b"base:allocation", b"qemu:dirty-bitmap:x"]);
        let Ok(ClientOption::SetMetaContext(req)) = parse_option(OPT_SET_META_CONTEXT, &d) else {
            panic!("expected SET_META_CONTEXT");
        };
        assert_eq!(req.name, "disk");
        assert_eq!(req.query_count(), 2);
        assert_eq!(
            req.queries().collect::<Vec<_>>(),
            vec!["base:allocation", "qemu:dirty-bitmap:x"]
        );

        let d = meta_data(b"", &[]);
        let Ok(ClientOption::ListMetaContext(req)) = parse_option(OPT_LIST_META_CONTEXT, &d) else {
            panic!("expected LIST_META_CONTEXT");
        };
        assert_eq!(req.query_count(), 0);
        assert_eq!(req.queries().count(), 0);
    }

    #[test]
    fn meta_context_rejects_malformed() {
        // Query without namespace.
        let d = meta_data(b"disk", &[b"allocation"]);
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &d),
            Err(OptionError::BadQuery)
        );
        let d = meta_data(b"disk", &[b":allocation"]);
        assert_eq!(
            parse_option(OPT_LIST_META_CONTEXT, &d),
            Err(OptionError::BadQuery)
        );
        // Count larger than the queries present.
        let mut d = meta_data(b"disk", &[b"base:"]);
        d[11] = 2;
        assert_eq!(
            parse_option(OPT_LIST_META_CONTEXT, &d),
            Err(OptionError::Truncated)
        );
        // Huge count with no queries.
        let mut d = meta_data(b"disk", &[]);
        d[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            parse_option(OPT_LIST_META_CONTEXT, &d),
            Err(OptionError::Truncated)
        );
        // Trailing data.
        let mut d = meta_data(b"disk", &[b"base:"]);
        d.push(1);
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &d),
            Err(OptionError::TrailingData)
        );
        // Missing query count.
        let mut d = meta_data(b"disk", &[]);
        d.truncate(8);
        assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &d),
            Err(OptionError::Truncated)
        );
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_options() {
        let samples = [
            (OPT_GO, info_data(b"disk", &[INFO_NAME, INFO_BLOCK_SIZE])),
            (OPT_INFO, info_data("é".as_bytes(), &[INFO_EXPORT])),
            (
                OPT_SET_META_CONTEXT,
                meta_data(b"disk", &[b"base:allocation", b"base:"]),
            ),
            (OPT_LIST_META_CONTEXT, meta_data(b"", &[b"x-foo:bar"])),
        ];
        for (code, data) in samples {
            for end in 0..=data.len() {
                let _ = parse_option(code, &data[..end]);
                let mut mangled = data[..end].to_vec();
                for b in mangled.iter_mut().step_by(3) {
                    *b ^= 0xa5;
                }
                let _ = parse_option(code, &mangled);
            }
        }
    }
}
