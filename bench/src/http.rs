//! A thin HTTP client over one or more `twofold serve` processes, picked
//! round robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Client, Method};
use serde_json::Value;

pub struct Target {
    client: Client,
    urls: Vec<String>,
    next: AtomicUsize,
}

/// What came back: the status (`None` when no answer arrived) and the body.
pub struct Answer {
    pub status: Option<u16>,
    pub body: Value,
}

impl Answer {
    /// `"200"`, `"429"`, ... or `"io"`.
    pub fn outcome(&self) -> String {
        self.status
            .map_or_else(|| "io".to_string(), |status| status.to_string())
    }

    pub fn ok(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }

    pub fn text(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }
}

impl Target {
    pub fn new(urls: &[String]) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "give at least one --url");
        let client = Client::builder()
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(Target {
            client,
            urls: urls
                .iter()
                .map(|url| url.trim_end_matches('/').to_string())
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    pub fn servers(&self) -> usize {
        self.urls.len()
    }

    /// The next server in the rotation.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()
    }

    pub async fn call(
        &self,
        server: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.urls[server % self.urls.len()]);
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json::<Value>().await.unwrap_or(Value::Null);
                Answer {
                    status: Some(status),
                    body,
                }
            }
            Err(_) => Answer {
                status: None,
                body: Value::Null,
            },
        }
    }

    pub async fn post(
        &self,
        server: usize,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Answer {
        self.call(server, Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, server: usize, path: &str, token: Option<&str>) -> Answer {
        self.call(server, Method::GET, path, token, None).await
    }
}
