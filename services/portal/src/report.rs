//! The report download of `GET /api/v1/cycles/{cycle}/report`: the progress
//! service's `report.v1` answer, fetched page by page (a NATS message holds
//! at most 1 MiB, so the Mẫu 04 list comes in pages) and joined, then
//! rendered as JSON, CSV (UTF-8 with BOM, for spreadsheet programs) or XLSX
//! by `gradeflow-progress`'s own renderers.

use gradeflow_progress::{report_csv, report_xlsx, Report};
use gradeflow_proto::{Actor, CycleId, OrgId};
use serde_json::json;

use crate::error::ApiError;
use crate::forward::Services;

/// How many times a report is fetched again when the read model moved
/// between its pages (the pages would not add up).
const ATTEMPTS: usize = 3;

/// A report format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `text/csv`.
    Csv,
    /// Office Open XML workbook.
    Xlsx,
}

impl Format {
    /// `json` (also the default), `csv` or `xlsx`; 400 otherwise.
    pub fn parse(format: Option<&str>) -> Result<Format, ApiError> {
        match format.map(str::to_ascii_lowercase).as_deref() {
            None | Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some("xlsx") => Ok(Format::Xlsx),
            Some(other) => Err(ApiError::invalid(
                format!("unknown report format `{other}` (json, csv or xlsx)"),
                "Định dạng báo cáo không hợp lệ (json, csv hoặc xlsx)",
            )
            .with_details(json!({ "field": "format" }))),
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Xlsx => "xlsx",
        }
    }

    /// The `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }
}

/// The whole report of `org`'s subtree: every page, read at one position of
/// the read model.
pub async fn fetch(
    services: &Services,
    actor: &Actor,
    cycle: CycleId,
    org: OrgId,
    traceparent: Option<String>,
) -> Result<Report, ApiError> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let mut report = page(services, actor, cycle, org, 0, traceparent.clone()).await?;
        let mut moved = false;
        while let Some(offset) = report.page.next {
            let next = page(services, actor, cycle, org, offset, traceparent.clone()).await?;
            moved |= next.position != report.position;
            report.append_page(next);
        }
        if !moved {
            return Ok(report);
        }
        last = Some(report);
    }
    // Still moving after a few tries (a busy cycle): the latest join.
    last.ok_or_else(|| ApiError::internal("the report could not be read"))
}

async fn page(
    services: &Services,
    actor: &Actor,
    cycle: CycleId,
    org: OrgId,
    offset: u64,
    traceparent: Option<String>,
) -> Result<Report, ApiError> {
    let value = services
        .query(
            "progress",
            "report.v1",
            actor,
            json!({ "cycle": cycle, "org": org, "offset": offset }),
            traceparent,
        )
        .await?;
    serde_json::from_value(value).map_err(|e| {
        tracing::error!(error = %e, "portal.report.unreadable");
        ApiError::internal("the progress service's report could not be read")
    })
}

/// The report's bytes in `format`.
pub fn render(format: Format, report: &Report) -> Result<Vec<u8>, ApiError> {
    match format {
        Format::Json => serde_json::to_vec(report)
            .map_err(|_| ApiError::internal("the report could not be encoded")),
        Format::Csv => Ok(report_csv(report).into_bytes()),
        Format::Xlsx => report_xlsx(report).map_err(|e| {
            tracing::error!(error = %e, "portal.report.xlsx_failed");
            ApiError::internal("the report could not be written as a workbook")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_with_json_the_default() {
        assert_eq!(Format::parse(None).ok(), Some(Format::Json));
        assert_eq!(Format::parse(Some("XLSX")).ok(), Some(Format::Xlsx));
        assert_eq!(
            Format::parse(Some("pdf")).map_err(|e| e.status.as_u16()),
            Err(400)
        );
    }
}
