//! What every handler gets: the application and the metrics recorder.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use twofold_app::App;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub app: App,
    pub metrics: PrometheusHandle,
    /// The API's OpenAPI document, served at `/api/v1/openapi.json`.
    pub openapi: Arc<utoipa::openapi::OpenApi>,
}

impl AppState {
    pub fn new(app: App, metrics: PrometheusHandle, openapi: utoipa::openapi::OpenApi) -> Self {
        AppState(Arc::new(Inner {
            app,
            metrics,
            openapi: Arc::new(openapi),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
