use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

use twofold_app::AppError;

use crate::error::ApiError;

/// The otpauth URI as an SVG QR code that authenticator apps scan.
pub fn svg(uri: &str) -> Result<String, ApiError> {
    let code =
        QrCode::with_error_correction_level(uri.as_bytes(), EcLevel::M).map_err(|error| {
            ApiError::App(AppError::Internal(format!("QR encoding failed: {error}")))
        })?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}
