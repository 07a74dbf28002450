//! The buyer pages over HTTP, black-box (no browser): the form flow from 免登 to the binding page, the CSRF
//! defence, safe `next`, escaping, the reasons and refusals on the binding page, the billing page's access rules,
//! the login redirect, the language switch and the embedded assets. The browser test is tests/browser.

use crate::world;

use reqwest::{header, Method, StatusCode};
use serde_json::json;
use world::*;

const ALI_UID: &str = "1688000000000501";

/// A browser-like client: keeps cookies, does not follow redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The per-form token from a page.
fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).map(|i| i + marker.len()).expect("a form with a csrf token");
    html[start..].split('"').next().unwrap().to_string()
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).unwrap_or_default().to_string()
}

async fn get(b: &reqwest::Client, url: &str) -> (StatusCode, String, String) {
    let r = b.get(url).send().await.unwrap();
    let (s, l) = (r.status(), location(&r));
    (s, l, r.text().await.unwrap())
}

async fn post(b: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
    let body = form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
    let r =
        b.post(url).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    let (s, l) = (r.status(), location(&r));
    (s, l, r.text().await.unwrap())
}

/// Registers through the pages from a 免登 link; answers where the registration led.
async fn register_from_sso(w: &World, b: &reqwest::Client, instance: &str, email: &str, name: &str) -> String {
    let v = w.sim(Method::GET, &format!("/sim/instances/{instance}/sso-url"), None).await;
    let (s, to_login, _) = get(b, v["url"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::FOUND);
    let next = format!("/bind/{instance}");
    assert_eq!(to_login, format!("/login?next={}", urlencode(&next)));
    let (s, _, login) = get(b, &format!("{}{to_login}", w.service)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(login.contains("免登") && login.contains(&format!("/register?next={}", urlencode(&next))), "{login}");
    let (_, _, page) = get(b, &format!("{}/register?next={}", w.service, urlencode(&next))).await;
    let csrf = csrf_of(&page);
    let form = [
        ("csrf", csrf.as_str()),
        ("next", next.as_str()),
        ("email", email),
        ("name", name),
        ("password", "pass word 1"),
    ];
    let (s, to, body) = post(b, &format!("{}/register", w.service), &form).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{body}");
    to
}

#[actix_rt::test]
async fn from_sso_through_registration_to_binding_with_reasons_refusals_and_billing() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let s1 = w.active_subscription(ALI_UID).await;
    let b = browser();
    let to = register_from_sso(&w, &b, &s1, "erin@example.com", "<script>alert(1)</script>").await;
    assert_eq!(to, format!("/bind/{s1}"));

    let bind_url = format!("{}/bind/{s1}", w.service);
    let (s, _, page) = get(&b, &bind_url).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("绑定云市场订阅") && page.contains(ALI_UID) && page.contains("组织所有者"), "{page}");
    assert!(!page.contains("<script>alert(1)</script>") && page.contains("&lt;script&gt;alert(1)&lt;"));
    assert_eq!(page.matches("type=\"radio\"").count(), 1);

    // Erin joins Frank's organization as a Member: listed, tagged 权限不足, without a radio button.
    let frank = w.user("frank").await;
    let erin = TestUser {
        email: "erin@example.com".into(),
        token: {
            let (s, v) = w
                .api(
                    Method::POST,
                    "/api/v1/sessions",
                    None,
                    Some(json!({"email": "erin@example.com", "password": "pass word 1"})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            v["token"].as_str().unwrap().to_string()
        },
        user_id: String::new(),
        org_id: String::new(),
    };
    // The page registered her; the mail the service sent verifies her address, which the invitation needs.
    w.verify("erin@example.com").await;
    w.join(&frank, &frank.org_id, &erin, "member").await;
    let (_, _, page) = get(&b, &bind_url).await;
    assert!(page.contains("权限不足") && page.contains("组织成员"), "{page}");
    assert_eq!(page.matches("type=\"radio\"").count(), 1);
    assert!(page.contains("id=\"confirm\">确认绑定"), "the confirm button is enabled");

    // A forged POST (no token, or a foreign Origin) is refused and changes nothing.
    let csrf = csrf_of(&page);
    let (s, _, _) = post(&b, &bind_url, &[("org_id", &frank.org_id)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = b
        .post(&bind_url)
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&org_id={}", frank.org_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The Member's organization: refused with 权限不足, the page shown again.
    let (s, _, page) = post(&b, &bind_url, &[("csrf", &csrf), ("org_id", &frank.org_id)]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(page.contains("id=\"bind-error\"") && page.contains("权限不足"), "{page}");
    // Nothing chosen.
    let (s, _, page) = post(&b, &bind_url, &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("请选择一个组织"));

    // Her own organization: on to processing, then bound.
    let own = page
        .split("data-bindable=\"true\"")
        .next()
        .and_then(|head| head.rsplit("data-org-id=\"").next())
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert!(own.starts_with("org_"), "{own}");
    let (s, to, _) = post(&b, &bind_url, &[("csrf", &csrf), ("org_id", &own)]).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, format!("/bind/{s1}/processing").as_str()));
    w.binding_decided(&erin, &s1).await;
    let (s, _, page) = get(&b, &format!("{}{to}", w.service)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("data-status=\"bound\"") && page.contains("前往帐单概览"), "{page}");
    let billing = format!("/orgs/{own}/billing");
    assert!(page.contains("id=\"go-billing\"") && page.contains(&own), "{page}");

    // The billing overview.
    let (s, _, page) = get(&b, &format!("{}{billing}", w.service)).await;
    assert_eq!(s, StatusCode::OK);
    for text in ["帐单概览", "正常", "云市场扣费渠道", ALI_UID, "查看阿里云帐单", "https://", "开通云市场扣费渠道"]
    {
        assert!(page.contains(text), "{text}: {page}");
    }
    // In English, remembered by a cookie.
    let (_, _, page) = get(&b, &format!("{}{billing}?lang=en", w.service)).await;
    assert!(page.contains("Billing overview") && page.contains("View the Aliyun bill") && page.contains("lang=\"en\""));
    let (_, _, page) = get(&b, &format!("{}{billing}", w.service)).await;
    assert!(page.contains("Billing overview"));
    let (_, _, page) = get(&b, &format!("{}{billing}?lang=zh", w.service)).await;
    assert!(page.contains("帐单概览"));
    // A Member may not see Frank's billing; nobody sees an organization they are not in.
    let (s, _, page) = get(&b, &format!("{}/orgs/{}/billing", w.service, frank.org_id)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(page.contains("权限不足"));
    let other = w.user("gina").await;
    let (s, _, _) = get(&b, &format!("{}/orgs/{}/billing", w.service, other.org_id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The bind page of the bound subscription says so and links to its organization's billing.
    let (_, _, page) = get(&b, &bind_url).await;
    assert!(page.contains("该订阅已绑定到组织") && page.contains(" disabled>确认绑定"), "{page}");

    // Log out (a form, with its token): the pages want a login again.
    let (_, _, page) = get(&b, &format!("{}/", w.service)).await;
    let (s, to, _) = post(&b, &format!("{}/logout", w.service), &[("csrf", &csrf_of(&page))]).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/login"));
    let (s, to, _) = get(&b, &format!("{}{billing}", w.service)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(to, format!("/login?next={}", urlencode(&billing)));
    w.shutdown().await;
}

#[actix_rt::test]
async fn login_follows_only_local_next_and_refuses_forged_forms() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let hal = w.user("hal").await;
    let b = browser();
    let (s, _, page) = get(&b, &format!("{}/login", w.service)).await;
    assert_eq!(s, StatusCode::OK);
    let csrf = csrf_of(&page);
    let login = format!("{}/login", w.service);
    // Without the token, or with another one: refused.
    let (s, _, _) = post(&b, &login, &[("email", &hal.email), ("password", "correct horse battery")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let bad = "0".repeat(64);
    let (s, _, _) =
        post(&b, &login, &[("csrf", &bad), ("email", &hal.email), ("password", "correct horse battery")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A wrong password: the form again, the e-mail kept (escaped), no session.
    let (s, _, page) =
        post(&b, &login, &[("csrf", &csrf), ("email", &hal.email), ("password", "wrong password")]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(page.contains("邮箱或密码错误") && page.contains(&hal.email));
    // An open redirect is not followed.
    for evil in ["//evil.example/x", "https://evil.example", "/\\evil.example", "/\t/evil.example"] {
        let form =
            [("csrf", csrf.as_str()), ("email", &hal.email), ("password", "correct horse battery"), ("next", evil)];
        let (s, to, _) = post(&b, &login, &form).await;
        assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/"), "{evil:?}");
    }
    let form =
        [("csrf", csrf.as_str()), ("email", &hal.email), ("password", "correct horse battery"), ("next", "/x?a=1")];
    let (_, to, _) = post(&b, &login, &form).await;
    assert_eq!(to, "/x?a=1");
    // Logged in: /login goes on to next.
    let (s, to, _) = get(&b, &format!("{login}?next=%2Forgs%2F{}%2Fbilling", hal.org_id)).await;
    assert_eq!((s, to), (StatusCode::SEE_OTHER, format!("/orgs/{}/billing", hal.org_id)));
    // Registration errors are shown on the form.
    let (_, _, page) = get(&b, &format!("{}/register", w.service)).await;
    let csrf = csrf_of(&page);
    let reg = format!("{}/register", w.service);
    let (s, _, page) =
        post(&b, &reg, &[("csrf", &csrf), ("email", &hal.email), ("name", "Hal"), ("password", "long enough")]).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(page.contains("该邮箱已注册"));
    let (s, _, page) =
        post(&b, &reg, &[("csrf", &csrf), ("email", "new@example.com"), ("name", "N"), ("password", "short")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(page.contains("密码需为 8 到 128 个字符"));
    // Pages and assets.
    let r = b.get(format!("{}/assets/app.css", w.service)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/css"));
    assert!(r.headers()[header::CACHE_CONTROL].to_str().unwrap().contains("max-age"));
    let r = b.get(format!("{}/assets/nope.js", w.service)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reqwest::Client::new().get(format!("{}/login", w.service)).send().await.unwrap();
    assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("default-src 'self'"));
    let r = reqwest::Client::new()
        .get(format!("{}/login", w.service))
        .header(header::ACCEPT_LANGUAGE, "en-US,en;q=0.9")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("Log in to Zilliz Cloud"));
    w.shutdown().await;
}

#[actix_rt::test]
async fn a_user_without_organizations_gets_the_seeds_advice_and_no_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::new(dir.path()).await;
    let s1 = w.active_subscription("1688000000000502").await;
    let b = browser();
    let to = register_from_sso(&w, &b, &s1, "ivy@example.com", "Ivy").await;
    assert_eq!(to, format!("/bind/{s1}"));
    let (s, v) = w
        .api(
            Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"email": "ivy@example.com", "password": "pass word 1"})),
        )
        .await;
    assert_eq!(s, 201);
    let token = v["token"].as_str().unwrap();
    let (_, orgs) = w.api(Method::GET, "/api/v1/orgs", Some(token), None).await;
    let org = orgs["orgs"][0]["org_id"].as_str().unwrap().to_string();
    let (s, _) = w.api(Method::POST, &format!("/api/v1/orgs/{org}/leave"), Some(token), None).await;
    assert_eq!(s, 200);
    let (s, _, page) = get(&b, &format!("{}/bind/{s1}", w.service)).await;
    assert_eq!(s, StatusCode::OK);
    for text in ["组织列表中无组织", "组织管理员", "提交工单", " disabled>确认绑定"] {
        assert!(page.contains(text), "{text}: {page}");
    }
    // A subscription this browser never came to through 免登 does not exist for it.
    let s2 = w.active_subscription("1688000000000503").await;
    let (s, _, page) = get(&b, &format!("{}/bind/{s2}", w.service)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(page.contains("免登"));
    w.shutdown().await;
}
