//! HTTP/1.1 for the API socket: requests parsed incrementally from a connection's bytes,
//! responses serialised with explicit framing.
//!
//! The request line and headers are parsed by `httparse`; this module adds what a server
//! must decide on top of it: framing (only `Content-Length` bodies), limits that bound the
//! memory one connection can hold, keep-alive, `Expect: 100-continue`, and an error for
//! every way a request can be refused, each carrying the status code to answer with.
//!
//! The parser never panics on input: every malformed byte sequence becomes an
//! [`HttpError`], after which the server answers once and closes the connection.

use std::fmt;

use serde::Serialize;

/// Most bytes the request line and headers together may take, blank line included.
/// A longer header section is refused with 431 before more of it is buffered.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Most bytes a request body may have (Firecracker's limit). Decided from `Content-Length`
/// before any of the body is read, so a client cannot make us buffer more: 413.
pub const MAX_BODY_BYTES: usize = 51_200;

/// Most header fields a request may have; one more is refused with 431.
pub const MAX_HEADERS: usize = 32;

/// The interim response a client that sent `Expect: 100-continue` waits for before it
/// sends the body (curl does for bodies over 1 KiB).
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Longest excerpt of client bytes quoted in an error message, so a message stays one
/// short line whatever the client sent.
const MAX_EXCERPT_CHARS: usize = 64;

/// Why a request cannot be served. The server answers with [`HttpError::status`] and the
/// message as a `fault_message`, then closes the connection: after a framing error it can
/// no longer tell where the next request would start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub enum HttpError {
    /// malformed request: {0}
    Malformed(String),
    /// request target {0:?} is not a path starting with '/'
    NotOriginForm(String),
    /// HTTP version {0:?} is not supported: use HTTP/1.0 or HTTP/1.1
    UnsupportedVersion(String),
    /// request header section exceeds {limit} bytes
    HeadersTooLarge { limit: usize },
    /// request has more than {limit} header fields
    TooManyHeaders { limit: usize },
    /// Content-Length {0:?} is not a decimal number of bytes
    InvalidContentLength(String),
    /// Content-Length is given twice with different values ({first} and {second})
    ConflictingContentLength { first: u64, second: u64 },
    /// request body of {length} bytes exceeds the limit of {limit} bytes
    BodyTooLarge { length: u64, limit: usize },
    /// Transfer-Encoding {0:?} is not supported: send the body with Content-Length
    TransferEncoding(String),
    /// Expect {0:?} is not supported: only 100-continue is
    UnsupportedExpectation(String),
    /// request was not complete within {millis} ms
    RequestTimeout { millis: u128 },
}

impl HttpError {
    /// The status code to answer this error with.
    ///
    /// `Transfer-Encoding` gets 501 (Not Implemented) rather than 411: the request is
    /// well formed, this server just does not implement chunked or any other coding.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_)
            | HttpError::NotOriginForm(_)
            | HttpError::InvalidContentLength(_)
            | HttpError::ConflictingContentLength { .. } => 400,
            HttpError::RequestTimeout { .. } => 408,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::UnsupportedExpectation(_) => 417,
            HttpError::HeadersTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::TransferEncoding(_) => 501,
            HttpError::UnsupportedVersion(_) => 505,
        }
    }
}

/// A request method. Methods are case-sensitive (RFC 9110 9.1): `get` is `Other("get")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
    Post,
    Delete,
    Head,
    Other(String),
}

impl Method {
    /// The method named `name` (case-sensitive, as on the wire).
    pub fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method's name as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Other(name) => name,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path as sent, starting with '/', without the query; not percent-decoded.
    pub path: String,
    /// What followed the first '?' in the request target, if there was one.
    pub query: Option<String>,
    /// Exactly `Content-Length` bytes; empty without one.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
}

/// A response to serialise with [`Response::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Sent as `Content-Type` when there is a body.
    pub content_type: Option<String>,
    /// Extra header fields, e.g. `Allow` for a 405. The framing fields this module writes
    /// itself (`Content-Length`, `Content-Type`, `Connection`, `Server`,
    /// `Transfer-Encoding`) are skipped here so they can never be doubled.
    pub headers: Vec<(String, String)>,
}

/// Firecracker's error body.
#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

/// The body sent if a response cannot be serialised (a map with non-string keys, say):
/// the server's bug, reported to the client as such rather than crashing.
const SERIALIZE_FAILED_BODY: &[u8] =
    br#"{"fault_message":"internal error: the response could not be serialized"}"#;

const JSON: &str = "application/json";

/// Header fields [`Response::write_to`] writes itself.
const FRAMING_HEADERS: [&str; 5] = [
    "content-length",
    "content-type",
    "connection",
    "server",
    "transfer-encoding",
];

impl Response {
    /// A response with this status and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            body: Vec::new(),
            content_type: None,
            headers: Vec::new(),
        }
    }

    /// `value` as a JSON body; a value serde cannot serialise gives a 500 fault instead.
    pub fn json(status: u16, value: &impl Serialize) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                body,
                content_type: Some(JSON.to_owned()),
                ..Response::new(status)
            },
            Err(_) => Response {
                body: SERIALIZE_FAILED_BODY.to_vec(),
                content_type: Some(JSON.to_owned()),
                ..Response::new(500)
            },
        }
    }

    /// 204 No Content: the answer to a successful `PUT`/`PATCH` action.
    pub fn no_content() -> Response {
        Response::new(204)
    }

    /// An error in Firecracker's shape, `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl fmt::Display) -> Response {
        Response::json(
            status,
            &Fault {
                fault_message: &message.to_string(),
            },
        )
    }

    /// Adds a header field, e.g. `Allow: GET, PUT` on a 405.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Appends the response to `out`: status line, `Server`, `Content-Length` (always, so
    /// the client never has to wait for a close to find the end, except on the statuses that
    /// cannot have a body, where RFC 9110 forbids it), `Content-Type` when there
    /// is a body, `Connection: keep-alive` or `Connection: close` (the former so HTTP/1.0
    /// clients that asked for keep-alive know they got it), the extra headers, the body.
    /// 1xx, 204 and 304 responses never carry a body, whatever `body` holds.
    pub fn write_to(&self, out: &mut Vec<u8>, keep_alive: bool) {
        self.write(out, keep_alive, true);
    }

    /// Like [`Response::write_to`] without the body, for a `HEAD` request: the client
    /// reads no body, so sending one would corrupt the next response.
    pub fn write_head_to(&self, out: &mut Vec<u8>, keep_alive: bool) {
        self.write(out, keep_alive, false);
    }

    fn write(&self, out: &mut Vec<u8>, keep_alive: bool, with_body: bool) {
        let status = if (100..=999).contains(&self.status) {
            self.status
        } else {
            500
        };
        let body: &[u8] = if status_allows_body(status) {
            &self.body
        } else {
            &[]
        };
        out.extend_from_slice(
            format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes(),
        );
        push_header(out, "Server", "tessera");
        if status_allows_body(status) {
            push_header(out, "Content-Length", &body.len().to_string());
        }
        if let (false, Some(content_type)) = (body.is_empty(), &self.content_type) {
            push_header(out, "Content-Type", &sanitize_value(content_type));
        }
        let connection = if keep_alive { "keep-alive" } else { "close" };
        push_header(out, "Connection", connection);
        for (name, value) in &self.headers {
            if is_token(name) && !is_framing_header(name) {
                push_header(out, name, &sanitize_value(value));
            }
        }
        out.extend_from_slice(b"\r\n");
        if with_body {
            out.extend_from_slice(body);
        }
    }
}

/// RFC 9110 15.2, 15.3.5, 15.4.5: these responses end at the blank line.
fn status_allows_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn is_framing_header(name: &str) -> bool {
    FRAMING_HEADERS
        .iter()
        .any(|framing| name.eq_ignore_ascii_case(framing))
}

/// A header name must be a token (RFC 9110 5.1); anything else could split the header.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Control characters (CR and LF above all) would let a value start a new header field.
fn sanitize_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The reason phrase for a status code; empty (which HTTP allows) for codes not listed.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// What the header section of a request said, kept while its body arrives.
#[derive(Debug)]
struct Head {
    method: Method,
    path: String,
    query: Option<String>,
    content_length: usize,
    keep_alive: bool,
    /// The client waits for [`CONTINUE_RESPONSE`] before sending the body.
    expects_continue: bool,
}

impl Head {
    fn into_request(self, body: Vec<u8>) -> Request {
        Request {
            method: self.method,
            path: self.path,
            query: self.query,
            body,
            keep_alive: self.keep_alive,
        }
    }
}

/// The header fields that decide framing and connection handling.
#[derive(Debug, Default)]
struct HeaderFacts {
    content_length: Option<u64>,
    close: bool,
    keep_alive: bool,
    expects_continue: bool,
}

impl HeaderFacts {
    fn from_headers(headers: &[httparse::Header<'_>]) -> Result<HeaderFacts, HttpError> {
        let mut facts = HeaderFacts::default();
        for header in headers {
            facts.add(header.name, header.value)?;
        }
        Ok(facts)
    }

    fn add(&mut self, name: &str, value: &[u8]) -> Result<(), HttpError> {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // Refused whatever the coding: with Content-Length as well it is the classic
            // request-smuggling ambiguity, and chunked bodies are not implemented.
            return Err(HttpError::TransferEncoding(excerpt(value)));
        }
        if name.eq_ignore_ascii_case("content-length") {
            self.set_content_length(value)?;
        } else if name.eq_ignore_ascii_case("connection") {
            self.add_connection_options(value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::UnsupportedExpectation(excerpt(value)));
            }
            self.expects_continue = true;
        }
        Ok(())
    }

    /// Only plain decimal digits: `u64::from_str` would also take "+5", and a list such
    /// as "5, 5" is refused rather than interpreted.
    fn set_content_length(&mut self, value: &[u8]) -> Result<(), HttpError> {
        let invalid = || HttpError::InvalidContentLength(excerpt(value));
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        let length = std::str::from_utf8(value)
            .ok()
            .and_then(|digits| digits.parse::<u64>().ok())
            .ok_or_else(invalid)?;
        match self.content_length {
            Some(first) if first != length => Err(HttpError::ConflictingContentLength {
                first,
                second: length,
            }),
            _ => {
                self.content_length = Some(length);
                Ok(())
            }
        }
    }

    fn add_connection_options(&mut self, value: &[u8]) {
        for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if option.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            }
        }
    }
}

/// A connection's incoming bytes, cut into requests.
///
/// [`feed`](RequestReader::feed) what the socket gave, then call
/// [`next_request`](RequestReader::next_request) until it returns `Ok(None)`; bytes past
/// a complete request stay for the next one, so pipelined requests come out one at a time
/// in order. Buffered bytes stay bounded as long as the caller drains complete requests
/// after each feed: a header section is refused past [`MAX_HEADER_BYTES`] and a body past
/// [`MAX_BODY_BYTES`].
///
/// After an error the reader is finished: it drops what it buffered and returns the same
/// error from then on.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// The current request's header section, once complete; `buf` then holds its body.
    head: Option<Head>,
    /// Bytes of `buf` already searched for a line end without completing the header
    /// section. Parsing only when a new line arrives keeps a client that trickles bytes
    /// from costing a full re-parse per byte.
    scanned: usize,
    /// The server should send [`CONTINUE_RESPONSE`] now.
    continue_due: bool,
    failed: Option<HttpError>,
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// Appends bytes read from the connection. Ignored after an error.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete request, `Ok(None)` if more bytes are needed first.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.advance();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.buf = Vec::new();
            self.head = None;
            self.continue_due = false;
        }
        result
    }

    /// True once per request, when its header section asked for `100-continue` and its
    /// body has not fully arrived: the caller should send [`CONTINUE_RESPONSE`] now.
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }

    /// Whether part of a request has arrived, which is when a request deadline runs.
    /// Blank lines between requests do not count once `next_request` has skipped them.
    pub fn has_partial_request(&self) -> bool {
        self.failed.is_none() && (self.head.is_some() || !self.buf.is_empty())
    }

    /// Bytes held for requests not yet returned.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    fn advance(&mut self) -> Result<Option<Request>, HttpError> {
        if self.head.is_none() {
            self.head = self.parse_head()?;
        }
        let Some(head) = &mut self.head else {
            return Ok(None);
        };
        if self.buf.len() < head.content_length {
            if std::mem::take(&mut head.expects_continue) {
                self.continue_due = true;
            }
            return Ok(None);
        }
        let body: Vec<u8> = self.buf.drain(..head.content_length).collect();
        self.continue_due = false;
        Ok(self.head.take().map(|head| head.into_request(body)))
    }

    /// Parses the header section once it is complete, consuming it from `buf`.
    fn parse_head(&mut self) -> Result<Option<Head>, HttpError> {
        self.skip_blank_lines();
        let window_len = self.buf.len().min(MAX_HEADER_BYTES);
        let unscanned = &self.buf[self.scanned.min(window_len)..window_len];
        if !unscanned.contains(&b'\n') && self.buf.len() <= MAX_HEADER_BYTES {
            self.scanned = self.buf.len();
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let window = &self.buf[..window_len];
        match parsed.parse(window) {
            Ok(httparse::Status::Complete(head_len)) => {
                let head = head_from_parsed(&parsed)?;
                self.buf.drain(..head_len);
                self.scanned = 0;
                Ok(Some(head))
            }
            Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEADER_BYTES => {
                Err(HttpError::HeadersTooLarge {
                    limit: MAX_HEADER_BYTES,
                })
            }
            Ok(httparse::Status::Partial) => {
                self.scanned = window_len;
                Ok(None)
            }
            Err(httparse::Error::TooManyHeaders) => {
                Err(HttpError::TooManyHeaders { limit: MAX_HEADERS })
            }
            Err(httparse::Error::Version) => Err(version_error(window)),
            Err(error) => Err(HttpError::Malformed(error.to_string())),
        }
    }

    /// RFC 9112 2.2: a server should ignore blank lines before a request line (some
    /// clients send CRLF after a body). Dropping them here also keeps them from counting
    /// as a partial request on an idle connection.
    fn skip_blank_lines(&mut self) {
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            self.buf.drain(..blank);
            self.scanned = self.scanned.saturating_sub(blank);
        }
    }
}

fn head_from_parsed(parsed: &httparse::Request<'_, '_>) -> Result<Head, HttpError> {
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::Malformed("incomplete request line".to_owned()));
    };
    if !target.starts_with('/') {
        return Err(HttpError::NotOriginForm(excerpt(target.as_bytes())));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let facts = HeaderFacts::from_headers(parsed.headers)?;
    let content_length = facts.content_length.unwrap_or(0);
    let content_length = usize::try_from(content_length)
        .ok()
        .filter(|&length| length <= MAX_BODY_BYTES)
        .ok_or(HttpError::BodyTooLarge {
            length: content_length,
            limit: MAX_BODY_BYTES,
        })?;
    let http11 = version == 1;
    Ok(Head {
        method: Method::parse(method),
        path: path.to_owned(),
        query,
        content_length,
        keep_alive: !facts.close && (http11 || facts.keep_alive),
        // RFC 9110 10.1.1: never send 100 Continue to an HTTP/1.0 client.
        expects_continue: facts.expects_continue && http11 && content_length > 0,
    })
}

/// `httparse` reports any bad version token the same way; an `HTTP/x.y` the server does
/// not speak gets 505, anything else in that place is a malformed request line.
fn version_error(head: &[u8]) -> HttpError {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let version = line
        .trim_ascii()
        .rsplit(|&b| b == b' ')
        .next()
        .unwrap_or_default();
    if version.starts_with(b"HTTP/") {
        HttpError::UnsupportedVersion(excerpt(version))
    } else {
        HttpError::Malformed("invalid HTTP version in the request line".to_owned())
    }
}

/// Client bytes fit for a one-line message: lossy UTF-8, at most [`MAX_EXCERPT_CHARS`]
/// characters, control characters replaced.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text
        .chars()
        .take(MAX_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_EXCERPT_CHARS {
        short.push_str("...");
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Request>, HttpError> {
        let mut reader = RequestReader::new();
        reader.feed(bytes);
        let mut requests = Vec::new();
        while let Some(request) = reader.next_request()? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn parse_one(bytes: &[u8]) -> Result<Option<Request>, HttpError> {
        let mut reader = RequestReader::new();
        reader.feed(bytes);
        reader.next_request()
    }

    fn status_of(bytes: &[u8]) -> u16 {
        match parse_one(bytes) {
            Err(error) => error.status(),
            Ok(request) => panic!("expected an error, got {request:?}"),
        }
    }

    fn serialize(response: &Response, keep_alive: bool) -> String {
        let mut out = Vec::new();
        response.write_to(&mut out, keep_alive);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_get() {
        let request = parse_one(b"GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.path, "/machine-config");
        assert_eq!(request.query, None);
        assert!(request.body.is_empty());
        assert!(request.keep_alive);
    }

    #[test]
    fn query_is_split_from_the_path() {
        let request = parse_one(b"GET /a/b?x=1&y=?2 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(request.path, "/a/b");
        assert_eq!(request.query.as_deref(), Some("x=1&y=?2"));
    }

    #[test]
    fn put_with_body() {
        let request = parse_one(
            b"PUT /drives/rootfs HTTP/1.1\r\nContent-Type: application/json\r\n\
              Content-Length: 13\r\n\r\n{\"a\": \"b c\"}\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(request.method, Method::Put);
        assert_eq!(request.path, "/drives/rootfs");
        assert_eq!(request.body, b"{\"a\": \"b c\"}\n");
    }

    #[test]
    fn body_waits_for_all_its_bytes() {
        let mut reader = RequestReader::new();
        reader.feed(b"PATCH /vm HTTP/1.1\r\nContent-Length: 4\r\n\r\nab");
        assert_eq!(reader.next_request(), Ok(None));
        assert!(reader.has_partial_request());
        reader.feed(b"cd");
        let request = reader.next_request().unwrap().unwrap();
        assert_eq!(request.method, Method::Patch);
        assert_eq!(request.body, b"abcd");
        assert!(!reader.has_partial_request());
    }

    #[test]
    fn pipelined_requests_in_one_feed() {
        let requests = parse_all(
            b"PUT /one HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
              GET /two HTTP/1.1\r\n\r\n\
              DELETE /three HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let paths: Vec<_> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/one", "/two", "/three"]);
        assert_eq!(requests[0].body, b"abc");
        assert_eq!(requests[2].method, Method::Delete);
        assert!(!requests[2].keep_alive);
    }

    #[test]
    fn leftover_bytes_wait_for_the_next_request() {
        let mut reader = RequestReader::new();
        reader.feed(b"GET /one HTTP/1.1\r\n\r\nGET /tw");
        assert_eq!(reader.next_request().unwrap().unwrap().path, "/one");
        assert_eq!(reader.next_request(), Ok(None));
        assert!(reader.has_partial_request());
        reader.feed(b"o HTTP/1.1\r\n\r\n");
        assert_eq!(reader.next_request().unwrap().unwrap().path, "/two");
    }

    #[test]
    fn request_split_byte_by_byte() {
        let bytes = b"PUT /x?y HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /z HTTP/1.1\r\n\r\n";
        let mut reader = RequestReader::new();
        let mut requests = Vec::new();
        for byte in bytes {
            reader.feed(std::slice::from_ref(byte));
            while let Some(request) = reader.next_request().unwrap() {
                requests.push(request);
            }
        }
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/x");
        assert_eq!(requests[0].query.as_deref(), Some("y"));
        assert_eq!(requests[0].body, b"hello");
        assert_eq!(requests[1].path, "/z");
        assert!(!reader.has_partial_request());
    }

    #[test]
    fn blank_lines_between_requests_are_skipped() {
        let requests =
            parse_all(b"\r\n\r\nGET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(requests.len(), 2);
        let mut reader = RequestReader::new();
        reader.feed(b"GET /a HTTP/1.1\r\n\r\n\r\n");
        assert!(reader.next_request().unwrap().is_some());
        assert_eq!(reader.next_request(), Ok(None));
        assert!(!reader.has_partial_request());
    }

    #[test]
    fn oversized_header_section_without_an_end() {
        let mut bytes = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        bytes.resize(MAX_HEADER_BYTES + 1, b'a');
        assert_eq!(
            parse_one(&bytes),
            Err(HttpError::HeadersTooLarge {
                limit: MAX_HEADER_BYTES
            })
        );
        assert_eq!(HttpError::HeadersTooLarge { limit: 1 }.status(), 431);
    }

    #[test]
    fn oversized_request_line_without_a_newline() {
        let mut bytes = b"GET /".to_vec();
        bytes.resize(MAX_HEADER_BYTES + 1, b'a');
        assert_eq!(status_of(&bytes), 431);
    }

    #[test]
    fn complete_header_section_just_over_the_limit() {
        let mut bytes = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        bytes.resize(MAX_HEADER_BYTES - 3, b'a');
        bytes.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status_of(&bytes), 431);
        bytes.truncate(MAX_HEADER_BYTES - 4);
        bytes.extend_from_slice(b"\r\n\r\n");
        assert_eq!(bytes.len(), MAX_HEADER_BYTES);
        assert!(parse_one(&bytes).unwrap().is_some());
    }

    #[test]
    fn too_many_headers() {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            bytes.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_one(&bytes),
            Err(HttpError::TooManyHeaders { limit: MAX_HEADERS })
        );
        assert_eq!(status_of(&bytes), 431);
    }

    #[test]
    fn oversized_content_length_is_refused_before_the_body() {
        let mut reader = RequestReader::new();
        reader.feed(b"PUT /x HTTP/1.1\r\nContent-Length: 51201\r\n\r\n");
        assert_eq!(
            reader.next_request(),
            Err(HttpError::BodyTooLarge {
                length: 51_201,
                limit: MAX_BODY_BYTES
            })
        );
        assert_eq!(reader.buffered_len(), 0);
        let huge = b"PUT /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(status_of(huge), 400);
        let mut at_limit = b"PUT /x HTTP/1.1\r\nContent-Length: 51200\r\n\r\n".to_vec();
        at_limit.resize(at_limit.len() + MAX_BODY_BYTES, b'x');
        assert_eq!(parse_one(&at_limit).unwrap().unwrap().body.len(), 51_200);
    }

    #[test]
    fn body_too_large_is_413() {
        assert_eq!(
            status_of(b"PUT /x HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"),
            413
        );
    }

    #[test]
    fn bad_content_length() {
        for value in ["abc", "-1", "+5", "5, 5", "", "0x10", "1 2"] {
            let request = format!("PUT /x HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(
                parse_one(request.as_bytes()),
                Err(HttpError::InvalidContentLength(value.to_owned())),
                "Content-Length {value:?}"
            );
        }
    }

    #[test]
    fn repeated_content_length() {
        let conflicting = b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(
            parse_one(conflicting),
            Err(HttpError::ConflictingContentLength {
                first: 1,
                second: 2
            })
        );
        assert_eq!(status_of(conflicting), 400);
        let same = b"PUT /x HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(parse_one(same).unwrap().unwrap().body, b"ab");
    }

    #[test]
    fn transfer_encoding_is_not_implemented() {
        for value in ["chunked", "gzip, chunked", "identity"] {
            let request = format!("PUT /x HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(
                parse_one(request.as_bytes()),
                Err(HttpError::TransferEncoding(value.to_owned()))
            );
        }
        let both = b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status_of(both), 501);
    }

    #[test]
    fn unsupported_versions() {
        for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3"] {
            let request = format!("GET / {version}\r\n\r\n");
            assert_eq!(
                parse_one(request.as_bytes()),
                Err(HttpError::UnsupportedVersion(version.to_owned()))
            );
        }
        assert_eq!(status_of(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(status_of(b"GET / FTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn http10_close_semantics() {
        let plain = parse_one(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!plain.keep_alive);
        let asked = parse_one(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(asked.keep_alive);
        let closed = parse_one(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!closed.keep_alive);
        let both = parse_one(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!both.keep_alive);
    }

    #[test]
    fn missing_or_garbage_request_line() {
        assert_eq!(parse_one(b"\r\n\r\n"), Ok(None));
        for bytes in [
            &b"garbage\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
        ] {
            assert_eq!(status_of(bytes), 400, "{bytes:?}");
        }
    }

    #[test]
    fn path_without_leading_slash() {
        for target in ["foo", "http://localhost/vm", "*"] {
            let request = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert_eq!(
                parse_one(request.as_bytes()),
                Err(HttpError::NotOriginForm(target.to_owned()))
            );
        }
    }

    #[test]
    fn expect_100_continue() {
        let mut reader = RequestReader::new();
        reader.feed(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(reader.next_request(), Ok(None));
        assert!(reader.take_continue());
        assert!(!reader.take_continue());
        reader.feed(b"a");
        assert_eq!(reader.next_request(), Ok(None));
        assert!(!reader.take_continue());
        reader.feed(b"bc");
        assert_eq!(reader.next_request().unwrap().unwrap().body, b"abc");

        // The body came with the header section: nothing to continue.
        reader.feed(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz");
        assert!(reader.next_request().unwrap().is_some());
        assert!(!reader.take_continue());

        // Never to an HTTP/1.0 client.
        reader.feed(b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(reader.next_request(), Ok(None));
        assert!(!reader.take_continue());
    }

    #[test]
    fn unsupported_expectation() {
        assert_eq!(
            status_of(b"PUT /x HTTP/1.1\r\nExpect: something\r\nContent-Length: 1\r\n\r\nz"),
            417
        );
    }

    #[test]
    fn errors_are_final() {
        let mut reader = RequestReader::new();
        reader.feed(b"GET foo HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let error = reader.next_request().unwrap_err();
        reader.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(reader.next_request(), Err(error));
        assert_eq!(reader.buffered_len(), 0);
        assert!(!reader.has_partial_request());
    }

    #[test]
    fn methods() {
        let request = parse_one(b"OPTIONS / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(request.method, Method::Other("OPTIONS".to_owned()));
        assert_eq!(request.method.to_string(), "OPTIONS");
        assert_eq!(Method::Patch.to_string(), "PATCH");
        let lower = parse_one(b"get / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(lower.method, Method::Other("get".to_owned()));
    }

    #[test]
    fn error_messages_are_short_lines() {
        let mut bytes = b"GET ".to_vec();
        bytes.resize(1000, b'a');
        bytes.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let message = parse_one(&bytes).unwrap_err().to_string();
        assert!(message.len() < 140, "{message}");
        assert!(!message.contains('\n'));
    }

    /// Random and mutated inputs, fed in random pieces: errors are fine, panics are not.
    #[test]
    fn never_panics_on_arbitrary_input() {
        let seeds: [&[u8]; 3] = [
            b"PUT /x?q HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"\r\nPOST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..3000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(random() % 6) {
                let at = (random() as usize) % input.len();
                input[at] = random() as u8;
            }
            if round % 7 == 0 {
                input = (0..random() % 200).map(|_| random() as u8).collect();
            }
            let mut reader = RequestReader::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let take = 1 + (random() as usize) % rest.len();
                reader.feed(&rest[..take]);
                rest = &rest[take..];
                while let Ok(Some(_)) = reader.next_request() {}
                reader.take_continue();
            }
        }
    }

    #[test]
    fn json_response() {
        let text = serialize(&Response::json(200, &serde_json::json!({"vcpus": 2})), true);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: tessera\r\nContent-Length: 11\r\n\
             Content-Type: application/json\r\nConnection: keep-alive\r\n\r\n{\"vcpus\":2}"
        );
    }

    #[test]
    fn no_content_response() {
        let text = serialize(&Response::no_content(), false);
        assert_eq!(
            text,
            "HTTP/1.1 204 No Content\r\nServer: tessera\r\nConnection: close\r\n\r\n"
        );
        let mut with_body = Response::no_content();
        with_body.body = b"ignored".to_vec();
        assert_eq!(serialize(&with_body, false), text);
    }

    #[test]
    fn fault_response() {
        let response = Response::fault(400, "bad \"thing\"\nhere");
        assert_eq!(response.status, 400);
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"fault_message": "bad \"thing\"\nhere"})
        );
        let text = serialize(&response, false);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn unserializable_json_is_a_500() {
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        let response = Response::json(200, &map);
        assert_eq!(response.status, 500);
        assert_eq!(response.body, SERIALIZE_FAILED_BODY);
    }

    #[test]
    fn extra_headers_are_written_but_cannot_break_framing() {
        let response = Response::fault(405, "no")
            .with_header("Allow", "GET, PUT")
            .with_header("X-Evil", "a\r\nContent-Length: 0")
            .with_header("Content-Length", "0")
            .with_header("Bad Name", "x");
        let text = serialize(&response, true);
        assert!(text.contains("\r\nAllow: GET, PUT\r\n"));
        assert!(text.contains("\r\nX-Evil: a  Content-Length: 0\r\n"));
        assert_eq!(text.matches("Content-Length").count(), 2);
        assert!(!text.contains("Bad Name"));
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    }

    #[test]
    fn head_response_has_no_body() {
        let response = Response::json(200, &"abc");
        let mut out = Vec::new();
        response.write_head_to(&mut out, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn odd_status_codes() {
        assert!(serialize(&Response::new(299), true).starts_with("HTTP/1.1 299 \r\n"));
        assert!(serialize(&Response::new(7), true).starts_with("HTTP/1.1 500 "));
    }
}
