//! The report as files for people: CSV (UTF-8 with a byte-order mark, so
//! Excel opens the Vietnamese text correctly) and XLSX, both with the
//! Vietnamese headings of the paper forms (`UX.md` § Words). The portal
//! renders `GET /api/v1/cycles/{cycle}/report?format=csv|xlsx` with these
//! from the [`Report`] it got from `report.v1`.
//!
//! The CSV is the Mẫu 04 dossier list alone, one row per dossier; the
//! workbook has the list, the summary (counts and percentages per grade and
//! segment, not-reviewed reasons, quota groups, overdue units) and the
//! named lists, one sheet each.

use gradeflow_proto::{Grade, SubjectKind, SubjectStatus};
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};

use crate::report::{DossierRow, Report};

/// The column headings of the Mẫu 04 dossier list, in order.
pub const COLUMNS: [&str; 11] = [
    "STT",
    "Họ và tên",
    "Đơn vị",
    "Mã đơn vị",
    "Loại",
    "Mẫu",
    "Lãnh đạo, quản lý",
    "Trạng thái",
    "Mức xếp loại",
    "Số quyết định",
    "Ghi chú",
];

/// The UTF-8 byte-order mark that makes Excel read a CSV as UTF-8.
pub const BOM: &str = "\u{feff}";

/// Why a report could not be written as a file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The workbook writer refused (e.g. more rows than a sheet holds).
    #[error("writing the report workbook")]
    Xlsx(#[source] XlsxError),
}

impl From<XlsxError> for ExportError {
    fn from(e: XlsxError) -> Self {
        ExportError::Xlsx(e)
    }
}

/// Grades from the best down, as the forms list them.
const GRADES_DESC: [Grade; 4] = [
    Grade::Excellent,
    Grade::Good,
    Grade::Completed,
    Grade::NotCompleted,
];

/// "Cá nhân" or "Tập thể".
pub fn kind_label_vi(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Individual => "Cá nhân",
        SubjectKind::Collective => "Tập thể",
    }
}

/// Why a subject is not reviewed, in Vietnamese (`None` when it is).
pub fn reason_label_vi(status: SubjectStatus) -> Option<&'static str> {
    match status {
        SubjectStatus::Active => None,
        SubjectStatus::NewMember => Some("Đảng viên mới (dưới 6 tháng)"),
        SubjectStatus::Exempt => Some("Được miễn công tác và sinh hoạt đảng"),
        SubjectStatus::Suspended => Some("Đình chỉ sinh hoạt đảng"),
    }
}

/// The remark of a row: why it is not reviewed, or what a re-grade
/// changed and why.
fn remark(r: &DossierRow) -> String {
    if let Some(reason) = reason_label_vi(r.status) {
        return format!("Không kiểm điểm: {reason}");
    }
    match (&r.previous_grade, &r.regrade_reason) {
        (Some(prev), reason) => {
            let mut s = format!("Xếp loại lại (trước: {})", prev.label_vi());
            if let Some(reason) = reason {
                s.push_str("; lý do: ");
                s.push_str(reason);
            }
            s
        }
        (None, _) => String::new(),
    }
}

/// The cells of one row, as text, in [`COLUMNS`] order.
pub fn row_cells(r: &DossierRow) -> [String; 11] {
    [
        r.stt.to_string(),
        r.name.clone(),
        r.unit.clone(),
        r.unit_code.clone(),
        kind_label_vi(r.kind).to_owned(),
        r.category.code().to_owned(),
        if r.leader { "x" } else { "" }.to_owned(),
        r.state.label_vi().to_owned(),
        r.grade.map(|g| g.label_vi()).unwrap_or_default().to_owned(),
        r.decision_number.clone().unwrap_or_default(),
        remark(r),
    ]
}

/// One CSV field: quoted when it holds a separator, quote or line break;
/// a leading `=`, `+`, `-` or `@` is defused with an apostrophe so a
/// spreadsheet never runs a name as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The Mẫu 04 dossier list as CSV: BOM, the Vietnamese headings, then one
/// row per dossier of the report, CRLF line ends (RFC 4180).
pub fn report_csv(report: &Report) -> String {
    let mut out = String::from(BOM);
    let line = |cells: &[String]| -> String {
        let fields: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        format!("{}\r\n", fields.join(","))
    };
    let headings: Vec<String> = COLUMNS.iter().map(|c| (*c).to_owned()).collect();
    out.push_str(&line(&headings));
    for r in &report.rows {
        out.push_str(&line(&row_cells(r)));
    }
    out
}

/// The report as an XLSX workbook: sheets "Mẫu 04" (the dossier list),
/// "Tổng hợp" (the counts), and the named lists.
pub fn report_xlsx(report: &Report) -> Result<Vec<u8>, ExportError> {
    let mut book = Workbook::new();
    let bold = Format::new().set_bold();
    let title = Format::new().set_bold().set_font_size(13);

    let sheet = book.add_worksheet();
    sheet.set_name("Mẫu 04")?;
    sheet.write_string_with_format(
        0,
        0,
        "DANH MỤC HỒ SƠ KIỂM ĐIỂM, ĐÁNH GIÁ, XẾP LOẠI (Mẫu 04)",
        &title,
    )?;
    sheet.write_string(1, 0, heading_line(report))?;
    dossier_table(sheet, 3, &report.rows, &bold)?;

    let sheet = book.add_worksheet();
    sheet.set_name("Tổng hợp")?;
    summary(sheet, report, &bold, &title)?;

    for (name, rows) in [
        ("Xuất sắc", &report.excellent),
        ("Không hoàn thành", &report.not_completed),
        ("Xếp loại lại", &report.regraded),
    ] {
        let sheet = book.add_worksheet();
        sheet.set_name(name)?;
        sheet.write_string_with_format(0, 0, format!("Danh sách: {name}"), &title)?;
        sheet.write_string(1, 0, heading_line(report))?;
        dossier_table(sheet, 3, rows, &bold)?;
    }
    Ok(book.save_to_buffer()?)
}

fn heading_line(report: &Report) -> String {
    format!(
        "Đơn vị: {} ({}) — Kỳ kiểm điểm, đánh giá, xếp loại năm {}",
        report.name, report.code, report.year
    )
}

fn dossier_table(
    sheet: &mut Worksheet,
    first: u32,
    rows: &[DossierRow],
    bold: &Format,
) -> Result<(), XlsxError> {
    for (col, heading) in (0u16..).zip(COLUMNS) {
        sheet.write_string_with_format(first, col, heading, bold)?;
    }
    for (i, r) in (first + 1..).zip(rows) {
        let cells = row_cells(r);
        sheet.write_number(i, 0, r.stt as f64)?;
        for (col, cell) in (1u16..).zip(cells.iter().skip(1)) {
            if !cell.is_empty() {
                sheet.write_string(i, col, cell)?;
            }
        }
    }
    for (col, width) in (0u16..).zip([6, 28, 28, 16, 10, 6, 10, 26, 30, 16, 40]) {
        sheet.set_column_width(col, width)?;
    }
    sheet.set_freeze_panes(first + 1, 0)?;
    Ok(())
}

fn summary(
    sheet: &mut Worksheet,
    report: &Report,
    bold: &Format,
    title: &Format,
) -> Result<(), XlsxError> {
    sheet.write_string_with_format(
        0,
        0,
        format!("KẾT QUẢ ĐÁNH GIÁ, XẾP LOẠI CHẤT LƯỢNG NĂM {}", report.year),
        title,
    )?;
    sheet.write_string(1, 0, heading_line(report))?;
    let mut headings = vec![
        "Đối tượng".to_owned(),
        "Số lượng".to_owned(),
        "Không kiểm điểm".to_owned(),
        "Đã xếp loại".to_owned(),
    ];
    for g in GRADES_DESC {
        headings.push(g.label_vi().to_owned());
        headings.push("Tỷ lệ (%)".to_owned());
    }
    let mut row = 3;
    for (col, h) in (0u16..).zip(&headings) {
        sheet.write_string_with_format(row, col, h, bold)?;
    }
    row += 1;
    let graded: u64 = report.grades.values().sum();
    let mut lines = vec![(
        "Tổng số".to_owned(),
        report.totals.subjects,
        report.totals.not_reviewed,
        graded,
        report.grades.clone(),
        report.percent.clone(),
    )];
    for s in &report.segments {
        lines.push((
            s.label_vi.clone(),
            s.subjects,
            s.not_reviewed,
            s.graded,
            s.grades.clone(),
            s.percent.clone(),
        ));
    }
    for (label, subjects, not_reviewed, graded, grades, percents) in lines {
        sheet.write_string(row, 0, label)?;
        sheet.write_number(row, 1, subjects as f64)?;
        sheet.write_number(row, 2, not_reviewed as f64)?;
        sheet.write_number(row, 3, graded as f64)?;
        for (col, g) in (4u16..).step_by(2).zip(GRADES_DESC) {
            let n = grades.get(&g).copied().unwrap_or_default();
            sheet.write_number(row, col, n as f64)?;
            sheet.write_number(row, col + 1, percents.get(&g).copied().unwrap_or_default())?;
        }
        row += 1;
    }

    row += 1;
    sheet.write_string_with_format(row, 0, "Không kiểm điểm theo lý do", bold)?;
    row += 1;
    for (status, n) in [
        (SubjectStatus::NewMember, report.not_reviewed.new_member),
        (SubjectStatus::Exempt, report.not_reviewed.exempt),
        (SubjectStatus::Suspended, report.not_reviewed.suspended),
    ] {
        sheet.write_string(row, 0, reason_label_vi(status).unwrap_or_default())?;
        sheet.write_number(row, 1, n as f64)?;
        row += 1;
    }

    row += 1;
    for (col, h) in (0u16..).zip([
        "Nhóm",
        Grade::Excellent.label_vi(),
        Grade::Good.label_vi(),
        "Tối đa được xếp xuất sắc",
        "Tỷ lệ xuất sắc / tốt (%)",
    ]) {
        sheet.write_string_with_format(row, col, h, bold)?;
    }
    row += 1;
    for q in &report.quota_groups {
        sheet.write_string(row, 0, &q.counts.group)?;
        sheet.write_number(row, 1, q.counts.excellent as f64)?;
        sheet.write_number(row, 2, q.counts.good as f64)?;
        sheet.write_number(row, 3, q.counts.max_excellent as f64)?;
        if let Some(p) = q.ratio_percent {
            sheet.write_number(row, 4, p)?;
        }
        row += 1;
    }

    row += 1;
    for (col, h) in (0u16..).zip(["Cấp", "Số đơn vị quá hạn"]) {
        sheet.write_string_with_format(row, col, h, bold)?;
    }
    row += 1;
    for (tier, n) in &report.overdue_by_tier {
        sheet.write_string(row, 0, tier.as_str())?;
        sheet.write_number(row, 1, *n as f64)?;
        row += 1;
    }
    sheet.set_column_width(0, 36)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_separators_quotes_or_formulas_are_escaped() {
        assert_eq!(csv_field("Nguyễn Văn A"), "Nguyễn Văn A");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("-x,y"), "\"'-x,y\"");
    }
}
