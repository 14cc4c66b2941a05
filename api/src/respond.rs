use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use twofold_projections::EventPosition;

pub const POSITION_HEADER: HeaderName = HeaderName::from_static("twofold-position");

/// An answer to a request that stored events: carries `Twofold-Position`.
pub struct Written<T> {
    pub status: StatusCode,
    pub position: Option<EventPosition>,
    pub body: T,
}

impl<T: IntoResponse> Written<T> {
    pub fn new(status: StatusCode, position: Option<EventPosition>, body: T) -> Self {
        Self {
            status,
            position,
            body,
        }
    }

    /// A use case's result, answered with `status` as `body` makes it.
    pub fn of<V>(
        status: StatusCode,
        written: twofold_app::Written<V>,
        body: impl FnOnce(V) -> T,
    ) -> Self {
        Self::new(status, written.position, body(written.value))
    }
}

impl<T: IntoResponse> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        if let Some(position) = self.position {
            if let Ok(value) = HeaderValue::from_str(&position.position.to_string()) {
                response.headers_mut().insert(POSITION_HEADER, value);
            }
        }
        response
    }
}
