//! The `http` sink: POSTs each batch of result documents to a URL, as one JSON array
//! (or JSON Lines). User guide: `docs/connectors/http.md`.
//!
//! A batch counts as delivered when the endpoint answers 2xx. Connection failures,
//! timeouts, 5xx, 408 and 429 are transient (the error policy retries them); any other
//! status is permanent and the error carries the status and the start of the response
//! body, so the orchestrator splits the batch and only the documents the endpoint
//! rejects go through the policy. Plain `http://` only (no TLS client is built in).

use crate::options::check_known;
use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Sink,
    Source,
};
use stream_core::value::{Document, ExtJsonMode, Value};

const NAME: &str = "http";

const SINK_OPTIONS: &[&str] = &[
    "url",
    "format",
    "headers",
    "timeout",
    "maxDocumentsPerRequest",
];

/// Default `timeout` of one request (connect, send, and read the whole response).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of an error response's body goes into the error message.
const BODY_IN_ERROR: usize = 1024;

/// Provides the `http` sink (there is no `http` source).
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpConnectorProvider;

impl ConnectorProvider for HttpConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        _config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        Ok(None)
    }

    fn create_sink(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        Ok(Some(Box::new(HttpSink::new(config)?)))
    }
}

/// How a batch is written in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// One JSON array of documents (`application/json`).
    Array,
    /// One document per line (`application/x-ndjson`).
    Lines,
}

/// POSTs batches of documents to an HTTP endpoint.
pub struct HttpSink {
    url: Uri,
    format: Format,
    headers: HeaderMap,
    timeout: Duration,
    max_per_request: usize,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("url", &self.url)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    /// A sink from its `options` (see `docs/connectors/http.md`).
    pub fn new(config: &ConnectorConfig) -> Result<Self, DefinitionError> {
        check_known(config, SINK_OPTIONS)?;
        let text = config.required_str("url")?;
        let url: Uri = text
            .parse()
            .map_err(|e| config.option_error("url", format!("invalid URL '{text}': {e}")))?;
        match url.scheme_str() {
            Some("http") if url.host().is_some() => {}
            Some("https") => {
                return Err(config.option_error(
                    "url",
                    format!("'{text}': https is not supported by the http sink (plain http only); put a TLS-terminating proxy in front of the endpoint"),
                ))
            }
            _ => {
                return Err(config.option_error(
                    "url",
                    format!("'{text}' is not an absolute http:// URL, e.g. http://127.0.0.1:8080/results"),
                ))
            }
        }
        let format = match config.str_option("format")? {
            None | Some("json") => Format::Array,
            Some("jsonl") => Format::Lines,
            Some(other) => {
                return Err(config.option_error(
                    "format",
                    format!("expected \"json\" (a JSON array per request) or \"jsonl\" (JSON Lines), found '{other}'"),
                ))
            }
        };
        let mut headers = HeaderMap::new();
        match config.options.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Document(d)) => {
                for (name, v) in d.iter() {
                    let key = format!("headers.{name}");
                    let Some(value) = v.as_str() else {
                        return Err(config.option_error(
                            &key,
                            format!("expected a string, found {}", v.type_name()),
                        ));
                    };
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                        config.option_error(&key, format!("invalid header name: {e}"))
                    })?;
                    let value = HeaderValue::from_str(value).map_err(|e| {
                        config.option_error(&key, format!("invalid header value: {e}"))
                    })?;
                    headers.append(name, value);
                }
            }
            Some(other) => {
                return Err(config.option_error(
                    "headers",
                    format!(
                        "expected an object of header name to string, found {}",
                        other.type_name()
                    ),
                ))
            }
        }
        let timeout = config
            .duration_option("timeout")?
            .unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(config.option_error("timeout", "expected a positive duration"));
        }
        let max_per_request = match config.u64_option("maxDocumentsPerRequest")? {
            Some(0) => {
                return Err(config.option_error(
                    "maxDocumentsPerRequest",
                    "expected a positive integer, found 0",
                ))
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        Ok(HttpSink {
            url,
            format,
            headers,
            timeout,
            max_per_request,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The request body for `docs`.
    fn body(&self, docs: &[Document]) -> String {
        let mut out = String::with_capacity(docs.len() * 128 + 2);
        if self.format == Format::Array {
            out.push('[');
        }
        for (i, d) in docs.iter().enumerate() {
            if i > 0 && self.format == Format::Array {
                out.push(',');
            }
            d.write_json(&mut out, ExtJsonMode::Relaxed);
            if self.format == Format::Lines {
                out.push('\n');
            }
        }
        if self.format == Format::Array {
            out.push(']');
        }
        out
    }

    /// POSTs one body and reads the whole response.
    async fn post(&self, body: String) -> Result<(), ConnectorError> {
        let content_type = match self.format {
            Format::Array => "application/json",
            Format::Lines => "application/x-ndjson",
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ConnectorError::permanent(NAME, format!("building the request: {e}")))?;
        // Configured headers may replace Content-Type.
        for (name, value) in &self.headers {
            request.headers_mut().insert(name, value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                ConnectorError::transient(NAME, format!("POST {}: {}", self.url, error_chain(&e)))
            })?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| {
                ConnectorError::transient(
                    NAME,
                    format!("POST {}: reading the response: {e}", self.url),
                )
            })?;
            Ok::<_, ConnectorError>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                ConnectorError::transient(
                    NAME,
                    format!(
                        "POST {}: no complete response within {} ms (sink option 'timeout')",
                        self.url,
                        self.timeout.as_millis()
                    ),
                )
            })??;
        if status.is_success() {
            return Ok(());
        }
        let message = format!(
            "POST {} answered {status}: {}",
            self.url,
            body_excerpt(&body)
        );
        Err(if is_transient(status) {
            ConnectorError::transient(NAME, message)
        } else {
            ConnectorError::permanent(NAME, message)
        })
    }
}

/// Statuses worth retrying: server errors, request timeout, too many requests.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The start of a response body, as text, for an error message.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_IN_ERROR)]);
    let text = text.trim();
    match (text.is_empty(), body.len() > BODY_IN_ERROR) {
        (true, _) => "(empty body)".to_string(),
        (false, true) => format!("{text}..."),
        (false, false) => text.to_string(),
    }
}

/// An error with its causes (the client's own message alone is often just "client
/// error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, batch: &[Document]) -> Result<(), ConnectorError> {
        // Requests go one after another, so the endpoint sees documents in order.
        for chunk in batch.chunks(self.max_per_request) {
            self.post(self.body(chunk)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        // `write` returns once the endpoint acknowledged every request.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(options: &[(&str, Value)]) -> Result<HttpSink, DefinitionError> {
        let mut config = ConnectorConfig::new("http");
        config.path = "sink".into();
        for (k, v) in options {
            config = config.option(k, v.clone());
        }
        HttpSink::new(&config)
    }

    #[test]
    fn bodies_are_json_arrays_or_lines() {
        let mut a = Document::new();
        a.insert("x", Value::Int32(1));
        let mut b = Document::new();
        b.insert("y", Value::string("z"));
        let docs = [a, b];
        let url = ("url", Value::string("http://127.0.0.1:1/r"));
        let array = sink(std::slice::from_ref(&url)).unwrap();
        assert_eq!(array.body(&docs), r#"[{"x":1},{"y":"z"}]"#);
        assert_eq!(array.body(&[]), "[]");
        let lines = sink(&[url, ("format", Value::string("jsonl"))]).unwrap();
        assert_eq!(lines.body(&docs), "{\"x\":1}\n{\"y\":\"z\"}\n");
    }

    #[test]
    fn bad_options_name_their_path() {
        for (options, expected) in [
            (
                vec![],
                "sink.options.url: the http connector needs option 'url'",
            ),
            (
                vec![("url", Value::string("https://example.com/"))],
                "sink.options.url: 'https://example.com/': https is not supported",
            ),
            (
                vec![("url", Value::string("/relative"))],
                "sink.options.url: '/relative' is not an absolute http:// URL",
            ),
            (
                vec![
                    ("url", Value::string("http://h/")),
                    ("format", Value::string("xml")),
                ],
                "sink.options.format: expected \"json\"",
            ),
            (
                vec![
                    ("url", Value::string("http://h/")),
                    ("timeout", Value::string("0 ms")),
                ],
                "sink.options.timeout: expected a positive duration",
            ),
            (
                vec![("url", Value::string("http://h/")), ("header", Value::Null)],
                "sink.options.header: unknown option 'header'",
            ),
        ] {
            let e = sink(&options).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{e}");
        }
        let mut headers = Document::new();
        headers.insert("bad name", Value::string("v"));
        let e = sink(&[
            ("url", Value::string("http://h/")),
            ("headers", Value::Document(headers)),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("sink.options.headers.bad name: invalid header name"),
            "{e}"
        );
    }

    #[test]
    fn statuses_are_classified() {
        for (code, transient) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (404, false),
            (413, false),
        ] {
            assert_eq!(
                is_transient(StatusCode::from_u16(code).unwrap()),
                transient,
                "{code}"
            );
        }
        assert_eq!(body_excerpt(b"  "), "(empty body)");
        assert_eq!(body_excerpt(&[b'x'; 2000]).len(), BODY_IN_ERROR + 3);
    }
}
