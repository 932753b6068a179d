//! The web UI (issue 8, `docs/ui.md`): server-rendered HTML shell pages at
//! `/` and `/ui/…`, plus the plain ES modules, the style sheet and the
//! string dictionary under `/assets/…`, all embedded in the binary from
//! `services/portal/ui/` — no front-end build, no generated bundle.
//!
//! The pages hold no data: their scripts call the REST API v1 with the
//! bearer token the user pasted (kept in `sessionStorage`), so the API
//! alone decides what a caller may see and do. The shell is rendered per
//! route with the page's Vietnamese title (the default language) and a
//! `<noscript>` note; the modules then draw the page and switch the
//! language on demand.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The shell every page starts from (`{{title}}` and `{{page}}` filled in).
const SHELL: &str = include_str!("../../ui/index.html");

/// The static files served under `/assets/`: name, content type, bytes.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/dom.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/i18n.js"),
    ),
    (
        "login.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/login.js"),
    ),
    (
        "worklist.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/worklist.js"),
    ),
    (
        "appraisal.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/appraisal.js"),
    ),
    (
        "decision.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/decision.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/dashboard.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/audit.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../ui/favicon.svg"),
    ),
];

/// The pages: the path's first segment after `/ui/`, the page id the
/// scripts route on, and its Vietnamese title (UX.md's terms).
const PAGES: &[(&str, &str, &str)] = &[
    ("", "login", "Đăng nhập"),
    ("callback", "callback", "Đăng nhập"),
    ("worklist", "worklist", "Danh sách hồ sơ của đơn vị"),
    ("dossier", "dossier", "Hồ sơ kiểm điểm"),
    ("appraisal", "appraisal", "Thẩm định"),
    ("decision", "decision", "Quyết định xếp loại"),
    ("dashboard", "dashboard", "Theo dõi tiến độ"),
    ("audit", "audit", "Kiểm tra, giám sát"),
];

/// The UI's routes, to merge into the portal's router (no token needed:
/// the pages and assets are public; every API call they make is not).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/{*rest}", get(page))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(favicon))
}

/// The page id and title for a path under `/ui/` (`None`: no such page).
pub fn page_for(path: &str) -> Option<(&'static str, &'static str)> {
    let rest = path
        .strip_prefix("/ui")
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or_else(|| path.trim_start_matches('/'));
    let first = rest.split('/').next().unwrap_or_default();
    PAGES
        .iter()
        .find(|(segment, _, _)| *segment == first)
        .map(|(_, id, title)| (*id, *title))
}

/// The shell of a page, with its title; 404 (still the shell, so the
/// scripts can offer the way home) for an unknown page.
async fn page(uri: Uri) -> Response {
    let (status, id, title) = match page_for(uri.path()) {
        Some((id, title)) => (StatusCode::OK, id, title),
        None => (StatusCode::NOT_FOUND, "notfound", "Không tìm thấy trang"),
    };
    let html = SHELL.replace("{{title}}", title).replace("{{page}}", id);
    (status, security_headers("text/html; charset=utf-8"), html).into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, bytes)) => (security_headers(content_type), *bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn favicon() -> Response {
    asset(Path("favicon.svg".to_owned())).await
}

/// Headers of every UI answer: the content type, no caching surprises
/// across upgrades (`no-cache` revalidates), nothing loaded from anywhere
/// but the portal itself, and no referrer (a callback URL may carry a
/// token in its fragment).
fn security_headers(content_type: &str) -> [(header::HeaderName, HeaderValue); 6] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                 script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_pages() {
        assert_eq!(page_for("/"), Some(("login", "Đăng nhập")));
        assert_eq!(page_for("/ui"), Some(("login", "Đăng nhập")));
        assert_eq!(
            page_for("/ui/decision"),
            Some(("decision", "Quyết định xếp loại"))
        );
        assert_eq!(
            page_for("/ui/dossier/abc"),
            Some(("dossier", "Hồ sơ kiểm điểm"))
        );
        assert_eq!(page_for("/ui/nothing"), None);
    }

    fn scripts() -> impl Iterator<Item = (&'static str, &'static str)> {
        ASSETS
            .iter()
            .filter(|(n, _, _)| n.ends_with(".js"))
            .map(|(n, _, b)| (*n, std::str::from_utf8(b).expect("utf-8")))
    }

    /// The quoted strings of `text` that start with `prefix`, up to the
    /// closing quote.
    fn quoted<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        let mut found = Vec::new();
        for quote in ['\'', '"'] {
            let open = format!("{quote}{prefix}");
            let mut rest = text;
            while let Some(at) = rest.find(&open) {
                let tail = &rest[at + 1..];
                let end = tail.find(quote).unwrap_or(tail.len());
                found.push(&tail[..end]);
                rest = &tail[end..];
            }
        }
        found
    }

    #[test]
    fn the_shell_names_its_scripts_and_every_module_is_served() {
        assert!(SHELL.contains("/assets/app.js"));
        assert!(SHELL.contains("/assets/style.css"));
        for (name, _, bytes) in ASSETS {
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        // Every module a script imports (statically or dynamically) is served.
        for (name, text) in scripts() {
            for path in quoted(text, "/assets/") {
                let file = path.trim_start_matches("/assets/");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == file),
                    "{name} names /assets/{file}, which is not served"
                );
            }
        }
    }

    #[test]
    fn every_string_key_the_scripts_use_is_in_both_languages() {
        let dictionary = scripts()
            .find(|(n, _)| *n == "i18n.js")
            .map(|(_, t)| t)
            .expect("i18n.js");
        let (vi, en) = dictionary
            .split_once("\n  en: {")
            .expect("the dictionary has an `en` part");
        let mut checked = 0;
        for (name, text) in scripts() {
            let mut rest = text;
            while let Some(at) = rest.find("t('") {
                let word_start = rest[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric() && c != '_');
                let tail = &rest[at + 3..];
                let end = tail.find('\'').unwrap_or(tail.len());
                let key = &tail[..end];
                rest = &tail[end..];
                if !word_start {
                    continue;
                }
                // Keys built at run time (`'grade.' + g`) end with a dot.
                if key.ends_with('.') || key.is_empty() {
                    continue;
                }
                for (lang, part) in [("vi", vi), ("en", en)] {
                    assert!(
                        part.contains(&format!("'{key}':"))
                            || part.contains(&format!("\n    {key}:")),
                        "{name}: string `{key}` is missing in `{lang}`"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} string uses found");
    }

    #[tokio::test]
    async fn pages_and_assets_are_served_with_their_types_and_headers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router::<()>()).await });
        let get = |path: &str| reqwest::get(format!("http://{addr}{path}"));

        let home = get("/").await.expect("GET /");
        assert_eq!(home.status(), 200);
        assert_eq!(home.headers()["content-type"], "text/html; charset=utf-8");
        assert!(home.headers()["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("default-src 'self'"));
        assert_eq!(home.headers()["referrer-policy"], "no-referrer");
        let html = home.text().await.expect("body");
        assert!(html.contains("<title>Đăng nhập · gradeflow</title>"));
        assert!(html.contains(r#"data-page="login""#));

        let page = get("/ui/dossier/0b7e6b1c").await.expect("GET dossier");
        assert_eq!(page.status(), 200);
        assert!(page
            .text()
            .await
            .expect("body")
            .contains(r#"data-page="dossier""#));
        let callback = get("/ui/callback").await.expect("GET callback");
        assert!(callback
            .text()
            .await
            .expect("body")
            .contains(r#"data-page="callback""#));

        let missing = get("/ui/nothing-here").await.expect("GET unknown page");
        assert_eq!(missing.status(), 404);
        assert!(missing
            .text()
            .await
            .expect("body")
            .contains(r#"data-page="notfound""#));

        let js = get("/assets/app.js").await.expect("GET app.js");
        assert_eq!(js.status(), 200);
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(js.headers()["x-content-type-options"], "nosniff");
        let css = get("/assets/style.css").await.expect("GET style.css");
        assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
        assert_eq!(get("/favicon.ico").await.expect("favicon").status(), 200);
        assert_eq!(
            get("/assets/nope.js").await.expect("GET nope").status(),
            404
        );
    }
}
