//! A minimal HTTP client for tests that call HTTP components (no client crate needed).

/// One HTTP/1.1 GET with `Host: host`: `"<status> <body>"`, or why it failed.
pub async fn http_get(endpoint: &str, host: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split(' ').nth(1).unwrap_or_default().to_owned();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // A chunked body: the single chunk's text.
        let body = if text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body.split("\r\n").nth(1).unwrap_or_default()
        } else {
            body
        };
        Ok::<_, String>(format!("{status} {}", body.trim_end_matches('\n')))
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}
