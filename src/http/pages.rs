//! The buyer's pages, rendered on the server: login and registration (which redeem a pending 免登 grant), the
//! binding page (绑定云市场订阅), the "processing your authorization" page, the billing overview (帐单概览) and a
//! small home page. Templates (`templates/*.html`) and assets (`assets/*`) are compiled into the binary; nothing
//! is fetched from elsewhere at build or run time.
//!
//! - Language: `?lang=en|zh` (remembered in the `mf_lang` cookie), else `Accept-Language`, else zh-CN.
//! - Every user value goes through the template engine's HTML autoescape.
//! - Forms are protected against cross-site requests three ways: the cookies are `SameSite=Lax`, every form
//!   carries a token that must match the `mf_csrf` cookie (double submit), and a present `Origin` (or, without
//!   it, `Referer`) must be this service's own origin.
//! - A page that needs a session redirects to `/login?next=<the page>`; `next` is followed only when it is a
//!   local path (starts with `/`, not `//` or `/\`, no control characters).
//! - Page handlers never panic: every failure is a rendered page with a status.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, FixedOffset, Utc};
use minijinja::Environment;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::marketplace;
use super::session::{session_token, SESSION_COOKIE, SSO_COOKIE};
use super::web as web_;
use super::web::i18n::{accept_language, Lang};
use super::AppState;
use crate::aliyun::encoding::{encode_query, parse_form, percent_encode};
use crate::app::accounts::User;
use crate::app::Kind;
use crate::domain::ids::{Email, Name, OrgId, Password};

/// The per-form token's cookie (double submit).
const CSRF_COOKIE: &str = "mf_csrf";
/// The chosen language.
const LANG_COOKIE: &str = "mf_lang";
/// The largest form body a page accepts.
const FORM_LIMIT: usize = 16 * 1024;
/// The longest `next` followed.
const NEXT_MAX: usize = 1024;
/// Where a buyer subscribes (the seed's link).
const MARKET_PRODUCT_URL: &str = "https://market.aliyun.com/products/56024006/cmgj00063418.html";
/// Where a buyer opens a ticket (the seed's link).
const SUPPORT_URL: &str = "https://support.zilliz.com.cn/hc/zh-cn";
/// The marketplace console (已购买的服务, 免登).
const MARKET_CONSOLE_URL: &str = "https://market.console.aliyun.com/";

/// The UI wording: key, zh-CN (the seed's), English.
const STRINGS: &[(&str, &str, &str)] = &[
    ("lang_name", "中文", "English"),
    ("other_lang_name", "English", "中文"),
    ("logout", "退出登录", "Log out"),
    ("home", "我的组织", "My organizations"),
    ("login_title", "登录", "Log in"),
    ("login_lead", "登录 Zilliz Cloud 以继续。", "Log in to Zilliz Cloud to continue."),
    (
        "sso_hint",
        "您正在通过阿里云云市场「免登」前往 Zilliz Cloud。登录或注册后，即可为您的组织绑定该云市场订阅。",
        "You came from the Alibaba Cloud Marketplace (免登). Log in or register, then bind the subscription to your \
         organization.",
    ),
    ("email", "邮箱", "E-mail"),
    ("password", "密码", "Password"),
    ("name", "姓名", "Name"),
    ("password_hint", "8 到 128 个字符", "8 to 128 characters"),
    ("login_button", "登录", "Log in"),
    ("no_account", "还没有 Zilliz Cloud 帐号？", "No Zilliz Cloud account yet?"),
    ("register_link", "注册", "Register"),
    ("register_title", "注册 Zilliz Cloud", "Register with Zilliz Cloud"),
    (
        "register_lead",
        "注册后将为您创建一个组织，您将成为该组织的所有者。",
        "Registering creates an organization of which you are the Owner.",
    ),
    ("register_button", "注册", "Register"),
    ("have_account", "已有帐号？", "Already registered?"),
    ("login_link", "登录", "Log in"),
    ("bind_title", "绑定云市场订阅", "Bind the marketplace subscription"),
    (
        "bind_lead",
        "在组织列表中选择需要绑定该支付方式的 Zilliz Cloud 组织，并单击「确认绑定」。列表中会罗列出所有您加入的组织。\
         您仅能选择绑定您负责管理的一个组织。",
        "Choose the Zilliz Cloud organization this payment method pays for and click “Confirm binding”. The list \
         shows every organization you belong to; you can bind only one that you administer.",
    ),
    ("subscription", "云市场订阅", "Marketplace subscription"),
    ("product", "商品", "Product"),
    ("product_name", "Zilliz Cloud（按量付费）", "Zilliz Cloud (pay as you go)"),
    ("instance_id", "实例 ID", "Instance ID"),
    ("aliyun_account_id", "阿里云帐号 ID", "Aliyun account ID"),
    ("status", "状态", "Status"),
    ("sub_opening", "开通中", "Opening"),
    ("sub_active", "已开通", "Active"),
    ("sub_activation_failed", "开通失败", "Activation failed"),
    ("sub_expired", "已停服（欠费）", "Suspended (arrears)"),
    ("sub_released", "已关闭", "Closed"),
    ("orgs", "选择组织", "Choose an organization"),
    ("org", "组织", "Organization"),
    ("colon", "：", ": "),
    ("role", "角色", "Role"),
    ("role_owner", "组织所有者", "Owner"),
    ("role_billing_admin", "帐单管理员", "Billing Admin"),
    ("role_member", "组织成员", "Member"),
    ("reason_insufficient_permission", "权限不足", "Insufficient permission"),
    ("reason_org_already_bound", "已绑定云市场订阅", "Already bound to a marketplace subscription"),
    ("confirm", "确认绑定", "Confirm binding"),
    ("no_orgs_title", "组织列表中无组织", "You belong to no organization"),
    (
        "no_orgs_lead",
        "如果您曾关闭过帐号或退出所有组织，您的组织列表中会没有组织。这种情况下，您可以：",
        "If you closed your account or left every organization, your list is empty. You can:",
    ),
    (
        "no_orgs_wait",
        "等待其他用户向您发送组织邀请，并将您设置为组织管理员。",
        "wait for another user to invite you into their organization as an administrator, or",
    ),
    ("no_orgs_ticket_before", "", ""),
    ("submit_ticket", "提交工单", "open a ticket"),
    ("no_orgs_ticket_after", "，联系我们为您创建一个新组织。", " and we create a new organization for you."),
    (
        "none_bindable",
        "列表中不存在可以绑定的组织，「确认绑定」不可用。您的角色必须为组织管理员才可绑定云市场订阅；已绑定云市场订阅的组织\
         需要先解绑。",
        "No organization in the list can be bound, so “Confirm binding” is unavailable. Only an administrator \
         (Owner or Billing Admin) may bind, and an organization that has a subscription must unbind it first.",
    ),
    (
        "sub_not_active_hint",
        "开通申请已提交，约需要 1 - 5 分钟完成开通。开通完成后请刷新本页面。",
        "The subscription is being activated, which takes 1–5 minutes. Refresh this page when it is done.",
    ),
    (
        "sub_gone_hint",
        "该订阅已不可用。如需继续使用，请在阿里云云市场重新订阅。",
        "This subscription can no longer be bound. Subscribe again on the Alibaba Cloud Marketplace.",
    ),
    ("sub_already_bound", "该订阅已绑定到组织。", "This subscription is bound to an organization already."),
    ("binding_pending_hint", "正在处理您的授权请求。", "Your authorization request is being processed."),
    ("see_progress", "查看进度", "See the progress"),
    ("processing_title", "Zilliz Cloud 正在处理您的授权请求", "Zilliz Cloud is processing your authorization"),
    ("processing_wait", "请稍候，本页面会自动刷新。", "Please wait; this page refreshes by itself."),
    ("bound_title", "绑定成功", "Binding complete"),
    (
        "bound_text",
        "已成功开通阿里云云市场扣费渠道。前往「帐单概览」页面，可在「云市场扣费渠道」区域查看阿里云帐单。",
        "The Alibaba Cloud Marketplace payment channel is active. The billing overview shows it with a link to the \
         Aliyun bill.",
    ),
    ("go_billing", "前往帐单概览", "Go to the billing overview"),
    ("refused_title", "绑定未完成", "The binding was not completed"),
    ("back_to_bind", "返回绑定页面", "Back to the binding page"),
    ("billing_title", "帐单概览", "Billing overview"),
    ("status_active", "正常", "Active"),
    ("status_frozen", "已冻结", "Frozen"),
    ("frozen_reason", "冻结原因", "Reason"),
    ("frozen_arrears", "阿里云云市场余额不足", "Alibaba Cloud Marketplace arrears"),
    ("frozen_no_payment_method", "无可用的支付方式", "No payment method"),
    ("frozen_operator", "由 Zilliz Cloud 支持团队冻结", "Frozen by Zilliz Cloud support"),
    (
        "recovery_arrears",
        "您的阿里云云市场余额不足，阿里云云市场已自动关闭 Zilliz Cloud 服务。如需继续使用，请先在阿里云云市场充值，充值完成后，\
         请重新开通阿里云云市场扣费渠道。",
        "Your Alibaba Cloud Marketplace balance ran out and the marketplace closed the service. Top up your Aliyun \
         account, then open the marketplace payment channel again.",
    ),
    (
        "recovery_no_payment_method",
        "订阅已取消且未在规定时间内绑定新的订阅。请在阿里云云市场重新订阅 Zilliz Cloud，并通过「免登」绑定到本组织。",
        "The subscription was closed and no new one was bound in time. Subscribe to Zilliz Cloud on the Alibaba \
         Cloud Marketplace again and bind it to this organization through 免登.",
    ),
    (
        "recovery_operator",
        "如有疑问，请提交工单联系我们。",
        "If you have questions, open a ticket with Zilliz Cloud support.",
    ),
    ("channel_title", "云市场扣费渠道", "Marketplace payment channel (云市场扣费渠道)"),
    ("channel_provider", "阿里云云市场", "Alibaba Cloud Marketplace"),
    ("bound_at", "绑定时间", "Bound at"),
    ("view_bill", "查看阿里云帐单", "View the Aliyun bill"),
    ("no_channel", "尚未开通阿里云云市场扣费渠道。", "No Alibaba Cloud Marketplace payment channel."),
    (
        "no_channel_howto",
        "前往阿里云云市场开通 Zilliz Cloud 服务，然后在云市场控制台「已购买的服务」中单击「免登」，为本组织绑定订阅。",
        "Subscribe to Zilliz Cloud on the Alibaba Cloud Marketplace, then click 免登 under “Purchased services” in \
         the marketplace console and bind the subscription to this organization.",
    ),
    ("go_market", "前往阿里云云市场", "Go to the Alibaba Cloud Marketplace"),
    ("switch_title", "正在切换订阅帐号", "Switching the subscribing account"),
    (
        "switch_text",
        "原订阅已取消。请在以下时间前使用新的阿里云帐号订阅并绑定，否则组织将被冻结：",
        "The previous subscription was closed. Subscribe and bind with the new Aliyun account before this time, or \
         the organization is frozen:",
    ),
    ("history_title", "扣费渠道变更记录", "Payment channel history"),
    ("time", "时间", "Time"),
    ("event", "事件", "Event"),
    ("details", "详情", "Details"),
    ("no_history", "暂无记录。", "Nothing yet."),
    ("ev_bound", "开通云市场扣费渠道", "Marketplace channel opened"),
    ("ev_switched", "切换订阅帐号", "Subscribing account switched"),
    ("ev_recovered", "重新开通，解除冻结", "Channel opened again, unfrozen"),
    ("ev_released", "订阅已取消", "Subscription closed"),
    ("ev_window_opened", "开始切换订阅帐号", "Account switch window opened"),
    ("ev_frozen", "组织已冻结", "Organization frozen"),
    ("ev_unfrozen", "解除冻结", "Unfrozen"),
    ("ev_resumed", "充值后恢复服务", "Service resumed"),
    ("ev_unlinked", "订阅已解除关联", "Subscription unlinked"),
    ("forbidden_title", "权限不足", "Insufficient permission"),
    (
        "forbidden_billing",
        "您的角色必须为组织所有者或帐单管理员才可查看帐单概览。如果您是组织成员，请联系组织管理员。",
        "Only an Owner or a Billing Admin sees the billing overview. If you are a Member, ask an administrator.",
    ),
    ("not_found_title", "未找到", "Not found"),
    (
        "sub_not_found",
        "未找到该订阅，或您无权查看。请回到阿里云云市场控制台的「已购买的服务」，重新单击「免登」。",
        "This subscription does not exist or is not yours to see. Go back to “Purchased services” in the \
         Alibaba Cloud Marketplace console and click 免登 again.",
    ),
    ("org_not_found", "未找到该组织，或您不是其成员。", "This organization does not exist or you are not a member."),
    ("market_console", "阿里云云市场控制台", "Alibaba Cloud Marketplace console"),
    ("error_title", "出错了", "Something went wrong"),
    ("try_again", "服务暂时不可用，请稍后重试。", "The service is unavailable for a moment; please try again."),
    ("purchased", "已购买的云市场订阅", "Marketplace subscriptions"),
    ("no_purchased", "暂无。", "None."),
    ("bind_action", "绑定", "Bind"),
    ("billing_action", "帐单概览", "Billing overview"),
    ("no_orgs_home", "您还没有加入任何组织。", "You belong to no organization yet."),
    ("beijing_time", "北京时间", "Beijing time"),
    ("err_csrf", "表单已过期，请重新提交。", "The form expired; please submit it again."),
    ("err_invalid_credentials", "邮箱或密码错误。", "The e-mail or the password is wrong."),
    ("err_rate_limited", "尝试次数过多，请稍后再试。", "Too many attempts. Please wait a minute and try again."),
    ("err_email_taken", "该邮箱已注册，请直接登录。", "This e-mail is registered already; log in instead."),
    ("err_invalid_email", "邮箱格式不正确。", "This is not a valid e-mail address."),
    ("err_weak_password", "密码需为 8 到 128 个字符。", "A password has 8 to 128 characters."),
    ("err_invalid_name", "姓名需为 1 到 100 个字符。", "A name has 1 to 100 characters."),
    ("err_select_org", "请选择一个组织。", "Choose an organization."),
    (
        "err_insufficient_permission",
        "权限不足：您的角色必须为组织管理员才可将云市场订阅绑定至该组织。请联系组织管理员。",
        "Insufficient permission: only an Owner or a Billing Admin may bind a subscription to this organization.",
    ),
    (
        "err_org_already_bound",
        "该组织已绑定云市场订阅。如需更新，请先解绑原订阅。",
        "This organization has a marketplace subscription bound already; unbind it first.",
    ),
    (
        "err_subscription_already_bound",
        "该云市场订阅已绑定到其他组织。",
        "This marketplace subscription is bound to an organization already.",
    ),
    (
        "err_subscription_not_active",
        "该订阅尚未开通完成或已不可用。",
        "The subscription is not active (still opening, or closed).",
    ),
    ("err_not_found", "未找到该组织或订阅。", "No such organization or subscription."),
    ("err_invalid_id", "组织 ID 不正确。", "Not a valid organization id."),
    ("err_generic", "操作未完成，请稍后重试。", "That did not work; please try again."),
    ("err_payload_too_large", "提交的内容过大。", "The form is too large."),
    ("email_verified_title", "邮箱已验证", "E-mail address verified"),
    (
        "email_verified_text",
        "您的邮箱地址已验证，现在可以接受组织的邀请。",
        "Your e-mail address is verified: you can now accept invitations to organizations.",
    ),
    (
        "err_invalid_verification_link",
        "该验证链接无效（已过期或从未发送）。请登录后重新获取验证邮件。",
        "This verification link is not valid (expired, or never sent). Log in and ask for a new mail.",
    ),
];

fn tr(lang: Lang, key: &str) -> &'static str {
    STRINGS.iter().find(|(k, _, _)| *k == key).map(|(_, zh, en)| if lang == Lang::Zh { *zh } else { *en }).unwrap_or("")
}

/// The message for an error code, or the generic one.
fn error_text(lang: Lang, code: &str) -> String {
    let key = format!("err_{code}");
    if STRINGS.iter().any(|(k, _, _)| *k == key) {
        tr(lang, &key).to_string()
    } else {
        format!("{} ({code})", tr(lang, "err_generic"))
    }
}

fn strings(lang: Lang) -> BTreeMap<&'static str, &'static str> {
    STRINGS.iter().map(|(k, zh, en)| (*k, if lang == Lang::Zh { *zh } else { *en })).collect()
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("register.html", include_str!("../../templates/register.html")),
    ("bind.html", include_str!("../../templates/bind.html")),
    ("processing.html", include_str!("../../templates/processing.html")),
    ("billing.html", include_str!("../../templates/billing.html")),
    ("home.html", include_str!("../../templates/home.html")),
    ("message.html", include_str!("../../templates/message.html")),
];

/// An asset: path under `/assets/`, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.css", "text/css; charset=utf-8", include_str!("../../assets/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../assets/app.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../assets/favicon.svg")),
    ("api-docs.css", "text/css; charset=utf-8", include_str!("../../assets/api-docs.css")),
];

/// The pages' part of the API description: HTML for browsers, described so that the description covers every
/// route the service serves.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        home,
        login_get,
        login_post,
        register_get,
        register_post,
        verify_email,
        logout_post,
        bind_get,
        bind_post,
        processing,
        binding_status,
        billing,
        asset
    ),
    components(schemas(PageLoginForm, PageRegisterForm, PageLogoutForm, PageBindForm))
)]
pub struct PagesApi;

/// The login form. Described only: the handler reads the raw form itself, after the CSRF checks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PageLoginForm {
    /// Must equal the `mf_csrf` cookie (double submit).
    csrf: String,
    email: String,
    password: String,
    /// A local path to go on to.
    next: Option<String>,
}

/// The registration form. Described only: the handler reads the raw form itself, after the CSRF checks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PageRegisterForm {
    /// Must equal the `mf_csrf` cookie (double submit).
    csrf: String,
    email: String,
    name: String,
    password: String,
    /// A local path to go on to.
    next: Option<String>,
}

/// The logout form. Described only: the handler reads the raw form itself, after the CSRF checks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PageLogoutForm {
    /// Must equal the `mf_csrf` cookie (double submit).
    csrf: String,
}

/// The binding form (确认绑定). Described only: the handler reads the raw form itself, after the CSRF checks.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PageBindForm {
    /// Must equal the `mf_csrf` cookie (double submit).
    csrf: String,
    /// The organization to bind to.
    org_id: Option<String>,
}

/// Formats an RFC 3339 time in Beijing time (UTC+8), as the marketplace shows times.
fn datetime(value: String) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(&value) else { return value };
    match FixedOffset::east_opt(8 * 3600) {
        Some(bj) => t.with_timezone(&bj).format("%Y-%m-%d %H:%M:%S").to_string(),
        None => t.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = super::web::templates("page", TEMPLATES);
        env.add_filter("datetime", datetime);
        env
    })
}

/// What every page needs to know about its request.
struct Ctx {
    lang: Lang,
    /// The `mf_lang` cookie to set (a `?lang=` was given).
    set_lang: Option<Cookie<'static>>,
    csrf: String,
    /// The `mf_csrf` cookie to set (the browser had none).
    set_csrf: Option<Cookie<'static>>,
    query: Vec<(String, String)>,
    path: String,
}

impl Ctx {
    fn new(state: &AppState, req: &HttpRequest) -> Ctx {
        let query = parse_form(req.query_string()).unwrap_or_default();
        let asked = super::web::param(&query, "lang").and_then(Lang::parse);
        let remembered = req.cookie(LANG_COOKIE).and_then(|c| Lang::parse(c.value()));
        let lang = asked.or(remembered).or_else(|| accept_language(req)).unwrap_or(Lang::Zh);
        let set_lang = asked.filter(|a| Some(*a) != remembered).map(|a| {
            let c = web_::cookie(state, LANG_COOKIE, a.short().to_string(), "/", SameSite::Lax);
            web_::lasting(c, chrono::TimeDelta::days(365))
        });
        let (csrf, set_csrf) = web_::csrf::issue(state, req, CSRF_COOKIE, "/", SameSite::Lax);
        Ctx { lang, set_lang, csrf, set_csrf, query, path: req.path().to_string() }
    }

    fn t(&self, key: &str) -> &'static str {
        tr(self.lang, key)
    }

    /// This page in the other language.
    fn switch_url(&self) -> String {
        let mut pairs: Vec<(&str, &str)> =
            self.query.iter().filter(|(k, _)| k != "lang").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.push(("lang", self.lang.other().short()));
        format!("{}?{}", self.path, encode_query(pairs))
    }

    /// Renders a template with the common context plus `extra` (an object).
    fn render(&self, user: Option<&User>, template: &str, status: StatusCode, extra: Value) -> HttpResponse {
        let mut ctx = Map::new();
        ctx.insert("lang".into(), json!(self.lang.tag()));
        ctx.insert("t".into(), json!(strings(self.lang)));
        ctx.insert("csrf".into(), json!(self.csrf));
        ctx.insert("switch_url".into(), json!(self.switch_url()));
        ctx.insert("user".into(), user.map(|u| json!({ "email": u.email, "name": u.name })).unwrap_or(Value::Null));
        if let Value::Object(extra) = extra {
            ctx.extend(extra);
        }
        let rendered = templates().get_template(template).and_then(|t| t.render(Value::Object(ctx)));
        match rendered {
            Ok(body) => self.html(status, body),
            Err(e) => {
                tracing::error!(template, error = %e, "a page could not be rendered");
                self.html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "<!doctype html><meta charset=\"utf-8\"><title>Zilliz Cloud</title>\
                         <link rel=\"stylesheet\" href=\"/assets/app.css\"><main class=\"card\"><h1>{}</h1><p>{}</p></main>",
                        self.t("error_title"),
                        self.t("try_again")
                    ),
                )
            }
        }
    }

    fn html(&self, status: StatusCode, body: String) -> HttpResponse {
        let mut r = web_::html(status);
        r.insert_header((header::CONTENT_LANGUAGE, self.lang.tag()));
        self.cookies(&mut r);
        r.body(body)
    }

    fn cookies(&self, r: &mut actix_web::HttpResponseBuilder) {
        if let Some(c) = &self.set_lang {
            r.cookie(c.clone());
        }
        if let Some(c) = &self.set_csrf {
            r.cookie(c.clone());
        }
    }

    /// A `303 See Other` to a local path.
    fn redirect(&self, to: &str) -> HttpResponse {
        let mut r = HttpResponse::SeeOther();
        match HeaderValue::from_str(to) {
            Ok(v) => r.insert_header((header::LOCATION, v)),
            Err(_) => r.insert_header((header::LOCATION, "/")),
        };
        r.insert_header((header::CACHE_CONTROL, "no-store"));
        self.cookies(&mut r);
        r.finish()
    }

    /// A page explaining what happened, with one link onwards.
    fn message(
        &self,
        user: Option<&User>,
        status: StatusCode,
        title: &str,
        text: &str,
        link: Option<(&str, &str)>,
    ) -> HttpResponse {
        let link = link.map(|(href, label)| json!({ "href": href, "label": label })).unwrap_or(Value::Null);
        self.render(
            user,
            "message.html",
            status,
            json!({ "title": self.t(title), "text": self.t(text), "code": title, "link": link }),
        )
    }

    fn unavailable(&self, user: Option<&User>) -> HttpResponse {
        self.message(user, StatusCode::SERVICE_UNAVAILABLE, "error_title", "try_again", None)
    }

    /// The page for an API error a page handler ran into.
    fn api_error(&self, user: Option<&User>, e: &ApiError) -> HttpResponse {
        if e.status.is_server_error() {
            tracing::warn!(code = %e.code, "a page could not be served");
            return self.unavailable(user);
        }
        self.render(
            user,
            "message.html",
            e.status,
            json!({ "title": self.t("error_title"), "text": error_text(self.lang, &e.code), "code": e.code, "link": null }),
        )
    }

    /// `/login?next=<this page>`.
    fn to_login(&self, req: &HttpRequest) -> HttpResponse {
        let here = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        self.redirect(&format!("/login?next={}", enc(here)))
    }
}

/// Characters of a followed `next` that are percent-encoded (non-ASCII is always encoded).
const NEXT_ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'<').add(b'>').add(b'`');

/// `next` if it is a local path, percent-encoded for a `Location` header; else `None`.
pub fn safe_next(next: &str) -> Option<String> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(|c| c.is_control() || c.is_whitespace())
        && next.len() <= NEXT_MAX;
    ok.then(|| utf8_percent_encode(next, NEXT_ENCODE).to_string())
}

/// The logged-in user, `Ok(None)` without a (valid) session, `Err` when the store cannot tell.
async fn current_user(state: &AppState, req: &HttpRequest) -> Result<Option<User>, ()> {
    let Some(token) = session_token(req) else { return Ok(None) };
    match state.accounts.authenticate(&token).await {
        Ok(u) => Ok(Some(u)),
        Err(crate::app::accounts::Error::Unauthenticated) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "session lookup failed");
            Err(())
        }
    }
}

/// The user, or the response to send instead (login redirect, or unavailable).
async fn require_user(state: &AppState, req: &HttpRequest, ctx: &Ctx) -> Result<User, Box<HttpResponse>> {
    match current_user(state, req).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(Box::new(ctx.to_login(req))),
        Err(()) => Err(Box::new(ctx.unavailable(None))),
    }
}

/// The form's bytes, or the page refusing them with a code (over [`FORM_LIMIT`]: 413 `payload_too_large`);
/// actix's own refusal is plain text without one.
fn form_bytes(ctx: &Ctx, body: Result<web::Bytes, actix_web::Error>) -> Result<web::Bytes, Box<HttpResponse>> {
    body.map_err(|e| {
        let status = e.as_response_error().status_code();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_body" };
        Box::new(ctx.api_error(None, &ApiError::new(status, code, e.to_string())))
    })
}

/// A submitted form: its fields, once the CSRF checks passed.
fn form(state: &AppState, req: &HttpRequest, body: &[u8]) -> Option<Vec<(String, String)>> {
    let fields = web_::fields(body)?;
    let given = web_::param(&fields, "csrf").unwrap_or("");
    let expected = web_::csrf::from_cookie(req, CSRF_COOKIE)?;
    web_::csrf::valid(state, req, given, &expected).then_some(fields)
}

/// Gives the browser's pending 免登 grant (cookie) to the user; returns the instance.
async fn redeem(state: &AppState, req: &HttpRequest, user: &User) -> Option<String> {
    let nonce = req.cookie(SSO_COOKIE)?.value().to_string();
    match state.accounts.redeem_pending_grant(&nonce, &user.id).await {
        Ok(instance) => instance,
        Err(e) => {
            tracing::error!(error = %e, "could not redeem a 免登 grant");
            None
        }
    }
}

/// Where to go after logging in: a safe `next`, else the binding page of a redeemed grant, else home.
fn after_login(next: Option<&str>, instance: Option<&str>) -> String {
    if let Some(n) = next.and_then(safe_next) {
        return n;
    }
    match instance {
        Some(i) => format!("/bind/{}", enc(i)),
        None => "/".to_string(),
    }
}

/// Logs the user in: session cookie, the 免登 grant redeemed, on to `next`.
async fn logged_in(
    state: &AppState,
    req: &HttpRequest,
    ctx: &Ctx,
    user: &User,
    token: &str,
    next: Option<&str>,
) -> HttpResponse {
    let instance = redeem(state, req, user).await;
    let mut r = ctx.redirect(&after_login(next, instance.as_deref()));
    let _ = r.add_cookie(&web_::cookie(state, SESSION_COOKIE, token.to_string(), "/", SameSite::Lax));
    if req.cookie(SSO_COOKIE).is_some() {
        let _ = r.add_cookie(&super::web::cleared(SSO_COOKIE, "/"));
    }
    r
}

fn next_of(ctx: &Ctx, fields: Option<&[(String, String)]>) -> Option<String> {
    fields
        .and_then(|f| super::web::param(f, "next"))
        .or_else(|| super::web::param(&ctx.query, "next"))
        .filter(|n| safe_next(n).is_some())
        .map(String::from)
}

fn auth_page(
    ctx: &Ctx,
    req: &HttpRequest,
    template: &str,
    status: StatusCode,
    next: Option<&str>,
    error: Option<String>,
    values: Value,
) -> HttpResponse {
    let next_q = next.map(|n| format!("?next={}", enc(n))).unwrap_or_default();
    ctx.render(
        None,
        template,
        status,
        json!({
            "next": next.unwrap_or(""),
            "next_q": next_q,
            "error": error,
            "values": values,
            "from_sso": req.cookie(SSO_COOKIE).is_some(),
        }),
    )
}

/// The login page.
#[utoipa::path(get, path = "/login", tag = "pages",
    params(("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)"), ("next" = Option<String>, Query, description = "a local path to go on to")),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "Already logged in: on to `next`, the 免登 grant's binding page, or home", headers(("Location" = String))),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn login_get(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let next = next_of(&ctx, None);
    match current_user(&state, &req).await {
        Ok(Some(user)) => {
            // Already logged in: take the grant and go on.
            let instance = redeem(&state, &req, &user).await;
            let mut r = ctx.redirect(&after_login(next.as_deref(), instance.as_deref()));
            if req.cookie(SSO_COOKIE).is_some() {
                let _ = r.add_cookie(&super::web::cleared(SSO_COOKIE, "/"));
            }
            r
        }
        Ok(None) => auth_page(&ctx, &req, "login.html", StatusCode::OK, next.as_deref(), None, json!({ "email": "" })),
        Err(()) => ctx.unavailable(None),
    }
}

/// Logs in from the form: the session cookie, the browser's 免登 grant redeemed, on to `next`.
#[utoipa::path(post, path = "/login", tag = "pages",
    request_body(content = PageLoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: on to `next`, the 免登 grant's binding page, or home",
            headers(("Location" = String), ("Set-Cookie" = String, description = "`mf_session`"))),
        (status = 400, description = "`invalid_body`: the body could not be read", content_type = "text/html"),
        (status = 401, description = "Wrong e-mail or password: the form again, with the error", content_type = "text/html"),
        (status = 403, description = "The form's CSRF token or origin does not match: the form again, with the error", content_type = "text/html"),
        (status = 413, description = "`payload_too_large`: the form is over 16 KiB", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn login_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let body = match form_bytes(&ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(fields) = form(&state, &req, &body) else {
        let next = next_of(&ctx, None);
        let err = Some(ctx.t("err_csrf").to_string());
        return auth_page(
            &ctx,
            &req,
            "login.html",
            StatusCode::FORBIDDEN,
            next.as_deref(),
            err,
            json!({ "email": "" }),
        );
    };
    let next = next_of(&ctx, Some(&fields));
    let raw_email = super::web::param(&fields, "email").unwrap_or("").trim().to_string();
    let values = json!({ "email": raw_email });
    let fail = |status: StatusCode, code: &str| {
        let err = Some(error_text(ctx.lang, code));
        auth_page(&ctx, &req, "login.html", status, next.as_deref(), err, values.clone())
    };
    let (Ok(email), Ok(password)) = (
        Email::try_from(raw_email.clone()),
        Password::parse(super::web::param(&fields, "password").unwrap_or("").to_string()),
    ) else {
        return fail(StatusCode::UNAUTHORIZED, "invalid_credentials");
    };
    match state.accounts.login(&email, password).await {
        Ok((token, _, user)) => {
            tracing::info!(user = %user.id, "logged in (page)");
            logged_in(&state, &req, &ctx, &user, &token, next.as_deref()).await
        }
        Err(crate::app::accounts::Error::InvalidCredentials) => fail(StatusCode::UNAUTHORIZED, "invalid_credentials"),
        Err(e) => {
            let e = ApiError::from(e);
            if e.status.is_server_error() {
                ctx.unavailable(None)
            } else {
                fail(e.status, &e.code)
            }
        }
    }
}

/// The registration page.
#[utoipa::path(get, path = "/register", tag = "pages",
    params(("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)"), ("next" = Option<String>, Query, description = "a local path to go on to")),
    responses((status = 200, description = "The page", content_type = "text/html")))]
async fn register_get(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let next = next_of(&ctx, None);
    auth_page(&ctx, &req, "register.html", StatusCode::OK, next.as_deref(), None, json!({ "email": "", "name": "" }))
}

/// The link mailed to a new address: opening it verifies the address (opening it again changes nothing). A GET,
/// because that is what a mail link is; the 256-bit token is the credential, and only the mailbox has it.
#[utoipa::path(get, path = "/verify-email", tag = "pages",
    params(("token" = String, Query, description = "the token of the mailed link (64 hex digits)"), ("lang" = Option<String>, Query, description = "`zh` or `en`")),
    responses(
        (status = 200, description = "The address is verified", content_type = "text/html"),
        (status = 400, description = "`invalid_verification_link`: unknown, expired, or for an address the account no longer has", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn verify_email(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    #[derive(serde::Deserialize)]
    struct Query {
        token: Option<String>,
    }
    let ctx = Ctx::new(&state, &req);
    let token = web::Query::<Query>::from_query(req.query_string()).ok().and_then(|q| q.0.token).unwrap_or_default();
    match state.accounts.verify_email(&token).await {
        Ok(_) => {
            ctx.message(None, StatusCode::OK, "email_verified_title", "email_verified_text", Some(("/", ctx.t("home"))))
        }
        Err(e) => ctx.api_error(None, &e.into()),
    }
}

/// Registers from the form and logs the new user in.
#[utoipa::path(post, path = "/register", tag = "pages",
    request_body(content = PageRegisterForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Registered and logged in: on to `next`, the 免登 grant's binding page, or home",
            headers(("Location" = String), ("Set-Cookie" = String, description = "`mf_session`"))),
        (status = 400, description = "`invalid_body`, `invalid_email`, `invalid_name` or `weak_password`: the form again",
            content_type = "text/html"),
        (status = 403, description = "The form's CSRF token or origin does not match: the form again, with the error", content_type = "text/html"),
        (status = 409, description = "`email_taken`: the form again", content_type = "text/html"),
        (status = 413, description = "`payload_too_large`: the form is over 16 KiB", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn register_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let body = match form_bytes(&ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(fields) = form(&state, &req, &body) else {
        let next = next_of(&ctx, None);
        let err = Some(ctx.t("err_csrf").to_string());
        let values = json!({ "email": "", "name": "" });
        return auth_page(&ctx, &req, "register.html", StatusCode::FORBIDDEN, next.as_deref(), err, values);
    };
    let next = next_of(&ctx, Some(&fields));
    let raw_email = super::web::param(&fields, "email").unwrap_or("").trim().to_string();
    let raw_name = super::web::param(&fields, "name").unwrap_or("").trim().to_string();
    let raw_password = super::web::param(&fields, "password").unwrap_or("").to_string();
    let values = json!({ "email": raw_email, "name": raw_name });
    let fail = |status: StatusCode, code: &str| {
        let err = Some(error_text(ctx.lang, code));
        auth_page(&ctx, &req, "register.html", status, next.as_deref(), err, values.clone())
    };
    let email = match Email::parse(raw_email.clone()) {
        Ok(e) => e,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.code),
    };
    let name = match Name::parse(raw_name.clone()) {
        Ok(n) => n,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.code),
    };
    let (password, again) = match (Password::parse(raw_password.clone()), Password::parse(raw_password)) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(e), _) | (_, Err(e)) => return fail(StatusCode::BAD_REQUEST, e.code),
    };
    let user = match state.accounts.register(email.clone(), password, name).await {
        Ok(u) => u,
        Err(crate::app::accounts::Error::EmailTaken) => return fail(StatusCode::CONFLICT, "email_taken"),
        Err(e) => {
            tracing::error!(error = %e, "registration failed (page)");
            return ctx.unavailable(None);
        }
    };
    tracing::info!(user = %user.id, "account registered (page)");
    match state.accounts.login(&email, again).await {
        Ok((token, _, user)) => logged_in(&state, &req, &ctx, &user, &token, next.as_deref()).await,
        Err(e) => {
            tracing::error!(error = %e, "login after registration failed (page)");
            let next_q = next.map(|n| format!("?next={}", enc(&n))).unwrap_or_default();
            ctx.redirect(&format!("/login{next_q}"))
        }
    }
}

/// Logs out from the form.
#[utoipa::path(post, path = "/logout", tag = "pages",
    request_body(content = PageLogoutForm, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [])),
    responses(
        (status = 303, description = "To the login page; the session cookie is cleared", headers(("Location" = String))),
        (status = 400, description = "`invalid_body`: the body could not be read", content_type = "text/html"),
        (status = 403, description = "The form's CSRF token or origin does not match", content_type = "text/html"),
        (status = 413, description = "`payload_too_large`: the form is over 16 KiB", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn logout_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let body = match form_bytes(&ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if form(&state, &req, &body).is_none() {
        return ctx.message(None, StatusCode::FORBIDDEN, "error_title", "err_csrf", Some(("/", ctx.t("home"))));
    }
    if let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_string()) {
        if let Err(e) = state.accounts.logout(&token).await {
            tracing::error!(error = %e, "logout failed (page)");
            return ctx.unavailable(None);
        }
    }
    let mut r = ctx.redirect("/login");
    let _ = r.add_cookie(&super::web::cleared(SESSION_COOKIE, "/"));
    r
}

/// A path segment or query value, percent-encoded (RFC 3986 unreserved characters stay literal).
fn enc(s: &str) -> String {
    percent_encode(s)
}

/// Home: the user's organizations and the marketplace subscriptions they came to.
#[utoipa::path(get, path = "/", tag = "pages", params(("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)")),
    security(("session" = [])),
    responses((status = 200, description = "The page", content_type = "text/html"), (status = 303, description = "No session: to `/login?next=<this page>`", headers(("Location" = String))), (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html")))]
async fn home(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let orgs = match state.memberships(&user).await {
        Ok(o) => o,
        Err(e) => return ctx.api_error(Some(&user), &e.into()),
    };
    let orgs: Vec<Value> = orgs
        .into_iter()
        .map(|m| {
            let billing_url = m.role.may_manage_billing().then(|| format!("/orgs/{}/billing", enc(m.org_id.as_str())));
            json!({
                "org_id": m.org_id, "name": m.org.name, "role": m.role, "status": m.state.billing_status(),
                "billing_url": billing_url,
            })
        })
        .collect();
    let purchased = match state.purchased(&user).await {
        Ok(p) => p,
        Err(e) => return ctx.api_error(Some(&user), &e.into()),
    };
    let subs: Vec<Value> = purchased
        .iter()
        .map(|(i, v)| {
            json!({
                "instance_id": i, "status": v.state, "aliyun_account_id": v.sub.ali_uid, "org_id": v.sub.org,
                "bind_url": format!("/bind/{}", enc(i)),
            })
        })
        .collect();
    ctx.render(Some(&user), "home.html", StatusCode::OK, json!({ "orgs": orgs, "subscriptions": subs }))
}

/// The binding page's data, with an optional error and the organization to preselect.
async fn bind_page(
    state: &AppState,
    ctx: &Ctx,
    user: &User,
    instance: &str,
    status: StatusCode,
    error: Option<String>,
    selected: Option<&str>,
) -> HttpResponse {
    let (st, sub) = match state.visible_subscription(user, instance).await.map_err(ApiError::from) {
        Ok(v) => (v.state, v.sub),
        Err(e) if e.status.is_client_error() => {
            return ctx.message(
                Some(user),
                StatusCode::NOT_FOUND,
                "not_found_title",
                "sub_not_found",
                Some((MARKET_CONSOLE_URL, ctx.t("market_console"))),
            )
        }
        Err(e) => return ctx.api_error(Some(user), &e),
    };
    let opts = match state.binding_options(user, instance).await {
        Ok(o) => o,
        Err(e) => return ctx.api_error(Some(user), &e.into()),
    };
    let bindable: Vec<&str> = opts.orgs.iter().filter(|o| o.bindable).map(|o| o.org_id.as_str()).collect();
    // One choice is preselected; with several, the buyer picks.
    let selected = selected.filter(|s| bindable.contains(s)).or(if bindable.len() == 1 {
        bindable.first().copied()
    } else {
        None
    });
    let binding = sub.binding.as_ref().map(|b| json!({ "status": b.status, "code": b.code, "org_id": b.org_id }));
    let bound_org_url = sub.org.as_ref().map(|o| format!("/orgs/{}/billing", enc(o.as_str())));
    ctx.render(
        Some(user),
        "bind.html",
        status,
        json!({
            "instance_id": instance,
            "aliyun_account_id": sub.ali_uid,
            "sub_status": st,
            "sub_status_label": ctx.t(&format!("sub_{st}")),
            "opts": opts,
            "selected": selected,
            "error": error,
            "binding": binding,
            "bound_org_url": bound_org_url,
            "action": format!("/bind/{}", enc(instance)),
            "processing_url": format!("/bind/{}/processing", enc(instance)),
            "support_url": SUPPORT_URL,
        }),
    )
}

/// The binding page (绑定云市场订阅): the user's organizations, which may take the subscription and why not.
#[utoipa::path(get, path = "/bind/{instance_id}", tag = "pages",
    params(("instance_id" = String, Path, description = "the marketplace instance id"), ("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)")),
    security(("session" = [])),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "No session: to `/login?next=<this page>`", headers(("Location" = String))),
        (status = 404, description = "No such subscription, or not the user's to see", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn bind_get(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    bind_page(&state, &ctx, &user, &path.into_inner(), StatusCode::OK, None, None).await
}

/// Confirms the binding (确认绑定) from the form.
#[utoipa::path(post, path = "/bind/{instance_id}", tag = "pages",
    params(("instance_id" = String, Path, description = "the marketplace instance id")),
    request_body(content = PageBindForm, content_type = "application/x-www-form-urlencoded"),
    security(("session" = [])),
    responses(
        (status = 303, description = "Requested: on to the processing page (or, without a session, to the login page)",
            headers(("Location" = String))),
        (status = 400, description = "`invalid_body`, or `invalid_id`: the binding page again, with the error",
            content_type = "text/html"),
        (status = 403, description = "CSRF mismatch or `insufficient_permission`: the binding page again", content_type = "text/html"),
        (status = 404, description = "No such subscription or organization, or not the user's", content_type = "text/html"),
        (status = 409, description = "`org_already_bound`, `subscription_already_bound` or `paused`", content_type = "text/html"),
        (status = 413, description = "`payload_too_large`: the form is over 16 KiB", content_type = "text/html"),
        (status = 422, description = "No organization chosen, or `subscription_not_active`", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn bind_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let body = match form_bytes(&ctx, body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let instance = path.into_inner();
    let Some(fields) = form(&state, &req, &body) else {
        let err = Some(ctx.t("err_csrf").to_string());
        return bind_page(&state, &ctx, &user, &instance, StatusCode::FORBIDDEN, err, None).await;
    };
    let Some(org) = super::web::param(&fields, "org_id").filter(|o| !o.is_empty()) else {
        let err = Some(error_text(ctx.lang, "select_org"));
        return bind_page(&state, &ctx, &user, &instance, StatusCode::UNPROCESSABLE_ENTITY, err, None).await;
    };
    let bound = match OrgId::parse(org.to_string()) {
        Ok(o) => state.bind(&user, &instance, &o).await.map_err(ApiError::from),
        Err(e) => Err(ApiError::from(e)),
    };
    match bound {
        Ok(binding) => {
            tracing::info!(user = %user.id, %binding, "binding requested (page)");
            ctx.redirect(&format!("/bind/{}/processing", enc(&instance)))
        }
        Err(e) if e.status.is_server_error() => ctx.api_error(Some(&user), &e),
        Err(e) => {
            let err = Some(error_text(ctx.lang, &e.code));
            bind_page(&state, &ctx, &user, &instance, e.status, err, Some(org)).await
        }
    }
}

/// "Zilliz Cloud 正在处理您的授权请求", until the organization has decided; then the result.
#[utoipa::path(get, path = "/bind/{instance_id}/processing", tag = "pages",
    params(("instance_id" = String, Path, description = "the marketplace instance id"), ("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)")),
    security(("session" = [])),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "No session (to the login page), or no binding requested (to the binding page)",
            headers(("Location" = String))),
        (status = 404, description = "No such subscription, or not the user's to see", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn processing(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let instance = path.into_inner();
    let sub = match state.visible_subscription(&user, &instance).await.map_err(ApiError::from) {
        Ok(v) => v.sub,
        Err(e) if e.status.is_client_error() => {
            return ctx.message(
                Some(&user),
                StatusCode::NOT_FOUND,
                "not_found_title",
                "sub_not_found",
                Some((MARKET_CONSOLE_URL, ctx.t("market_console"))),
            )
        }
        Err(e) => return ctx.api_error(Some(&user), &e),
    };
    let Some(b) = sub.binding.as_ref() else {
        return ctx.redirect(&format!("/bind/{}", enc(&instance)));
    };
    let reason = b.code.as_deref().map(|c| error_text(ctx.lang, c));
    ctx.render(
        Some(&user),
        "processing.html",
        StatusCode::OK,
        json!({
            "instance_id": instance,
            "status": b.status,
            "code": b.code,
            "reason": reason,
            "billing_url": format!("/orgs/{}/billing", enc(b.org_id.as_str())),
            "bind_url": format!("/bind/{}", enc(&instance)),
            "poll_url": format!("/bind/{}/status", enc(&instance)),
        }),
    )
}

/// The subscription as the processing page polls it, with the page's session cookie (`/api/v1` takes bearer
/// tokens only, so a page never needs its session as a token).
#[utoipa::path(get, path = "/bind/{instance_id}/status", tag = "pages",
    params(("instance_id" = String, Path, description = "the marketplace instance id")),
    security(("session" = [])),
    responses(
        (status = 200, body = marketplace::SubscriptionView),
        (status = 303, description = "No session: to the login page", headers(("Location" = String))),
        (status = 404, description = "`not_found`: no such subscription, or not the user's to see", body = super::error::ErrorBody),
        (status = 503, response = super::error::Unavailable),
    ))]
async fn binding_status(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let instance = path.into_inner();
    match state.visible_subscription(&user, &instance).await {
        Ok(v) => HttpResponse::Ok().json(marketplace::view(&instance, v.state, &v.sub)),
        Err(e) => actix_web::ResponseError::error_response(&ApiError::from(e)),
    }
}

/// 帐单概览: the organization's payment channel, status and history (Owners and Billing Admins).
#[utoipa::path(get, path = "/orgs/{org_id}/billing", tag = "pages",
    params(("org_id" = String, Path, description = "`org_<32 hex>`", pattern = "^org_[A-Za-z0-9_-]{1,60}$"), ("lang" = Option<String>, Query, description = "`zh` or `en` (remembered in the `mf_lang` cookie)")),
    security(("session" = [])),
    responses(
        (status = 200, description = "The page", content_type = "text/html"),
        (status = 303, description = "No session: to `/login?next=<this page>`", headers(("Location" = String))),
        (status = 403, description = "A Member: only Owners and Billing Admins see billing", content_type = "text/html"),
        (status = 404, description = "No such organization, or not a member", content_type = "text/html"),
        (status = 503, description = "The store could not answer: a page saying to try again", content_type = "text/html"),
    ))]
async fn billing(state: web::Data<AppState>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let ctx = Ctx::new(&state, &req);
    let user = match require_user(&state, &req, &ctx).await {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let not_found = || {
        ctx.message(Some(&user), StatusCode::NOT_FOUND, "not_found_title", "org_not_found", Some(("/", ctx.t("home"))))
    };
    let Ok(org) = OrgId::parse(path.into_inner()) else { return not_found() };
    let view = match state.billing(&user, &org).await {
        Ok(v) => v,
        Err(e) if e.kind == Kind::NotFound => return not_found(),
        Err(e) if e.kind == Kind::Forbidden => {
            return ctx.message(
                Some(&user),
                StatusCode::FORBIDDEN,
                "forbidden_title",
                "forbidden_billing",
                Some(("/", ctx.t("home"))),
            )
        }
        Err(e) => return ctx.api_error(Some(&user), &e.into()),
    };
    let role = state.membership(&user, &org).await.map(|m| m.role).ok();
    ctx.render(
        Some(&user),
        "billing.html",
        StatusCode::OK,
        json!({ "billing": view, "role": role, "market_url": MARKET_PRODUCT_URL }),
    )
}

/// A stylesheet, script or icon of the pages, from memory, cached for a day.
#[utoipa::path(get, path = "/assets/{name}", tag = "pages",
    params(("name" = String, Path, description = "`app.css`, `app.js`, `favicon.svg`, `api-docs.css`", example = "app.css")),
    responses(
        (status = 200, description = "The asset, cached for a day", content(
            ("text/css"), ("text/javascript"), ("image/svg+xml"))),
        (status = 404, description = "No such asset", content_type = "text/plain"),
    ))]
async fn asset(path: web::Path<String>) -> HttpResponse {
    embedded_asset(ASSETS, &path.into_inner(), "public, max-age=86400")
}

/// Serves one of the binary's embedded assets (`(name, content type, body)`), or a plain 404; shared with the
/// console, which only differs in how long browsers may cache.
pub(crate) fn embedded_asset(assets: &[(&str, &str, &'static str)], name: &str, cache: &'static str) -> HttpResponse {
    match assets.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CACHE_CONTROL, cache))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body(*body),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .body("not found"),
    }
}

/// Registers the pages and their assets.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let limit = || web::PayloadConfig::new(FORM_LIMIT);
    cfg.route("/", web::get().to(home))
        .service(
            web::resource("/login").app_data(limit()).route(web::get().to(login_get)).route(web::post().to(login_post)),
        )
        .service(
            web::resource("/register")
                .app_data(limit())
                .route(web::get().to(register_get))
                .route(web::post().to(register_post)),
        )
        .route("/verify-email", web::get().to(verify_email))
        .service(web::resource("/logout").app_data(limit()).route(web::post().to(logout_post)))
        .service(
            web::resource("/bind/{instance_id}")
                .app_data(limit())
                .route(web::get().to(bind_get))
                .route(web::post().to(bind_post)),
        )
        .route("/bind/{instance_id}/processing", web::get().to(processing))
        .route("/bind/{instance_id}/status", web::get().to(binding_status))
        .route("/orgs/{org_id}/billing", web::get().to(billing))
        .route("/assets/{name}", web::get().to(asset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_followed_only_to_local_paths() {
        assert_eq!(safe_next("/bind/abc").as_deref(), Some("/bind/abc"));
        assert_eq!(safe_next("/orgs/org_1/billing?lang=en").as_deref(), Some("/orgs/org_1/billing?lang=en"));
        assert_eq!(safe_next("/bind/中").as_deref(), Some("/bind/%E4%B8%AD"));
        for bad in ["//evil.example", "https://evil.example", "/\\evil.example", "evil", "", "/\t/evil", "/a b", "/\n"]
        {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
        assert_eq!(safe_next(&format!("/{}", "a".repeat(NEXT_MAX))), None);
        assert_eq!(after_login(Some("//evil"), Some("i-1")), "/bind/i-1");
        assert_eq!(after_login(None, None), "/");
    }

    #[test]
    fn every_template_compiles_and_every_string_has_both_languages() {
        for (name, _) in TEMPLATES {
            assert!(templates().get_template(name).is_ok(), "{name}");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, zh, en) in STRINGS {
            assert!(seen.insert(*k), "duplicate key {k}");
            let optional = k.starts_with("no_orgs_ticket");
            assert!(optional || (!zh.is_empty() && !en.is_empty()), "{k}");
        }
    }

    fn render(template: &str, lang: Lang, extra: Value) -> String {
        let mut ctx = Map::new();
        ctx.insert("lang".into(), json!(lang.tag()));
        ctx.insert("t".into(), json!(strings(lang)));
        ctx.insert("csrf".into(), json!("tok"));
        ctx.insert("switch_url".into(), json!("/x?lang=en"));
        ctx.insert("user".into(), json!({ "email": "a@example.com", "name": "<b>Ann</b>" }));
        if let Value::Object(e) = extra {
            ctx.extend(e);
        }
        templates()
            .get_template(template)
            .and_then(|t| t.render(Value::Object(ctx)))
            .unwrap_or_else(|e| panic!("{template}: {e:#}"))
    }

    #[test]
    fn pages_render_and_escape_user_data() {
        let opts = json!({
            "instance_id": "i-1", "subscription_status": "active", "can_confirm": true, "reason": null, "binding": null,
            "orgs": [
                { "org_id": "org_a", "name": "<script>x</script>", "role": "owner", "bindable": true, "reason": null },
                { "org_id": "org_b", "name": "B", "role": "member", "bindable": false, "reason": "insufficient_permission" },
                { "org_id": "org_c", "name": "C", "role": "owner", "bindable": false, "reason": "org_already_bound" },
            ],
        });
        let html = render(
            "bind.html",
            Lang::Zh,
            json!({
                "instance_id": "i-1", "aliyun_account_id": "1688", "sub_status": "active", "sub_status_label": "已开通",
                "opts": opts, "selected": "org_a", "error": null, "binding": null, "bound_org_url": null,
                "action": "/bind/i-1", "processing_url": "/bind/i-1/processing", "support_url": SUPPORT_URL,
            }),
        );
        assert!(html.contains("绑定云市场订阅") && html.contains("权限不足") && html.contains("已绑定云市场订阅"));
        assert!(!html.contains("<script>x</script>") && html.contains("&lt;script&gt;"), "escaped");
        assert!(!html.contains("<b>Ann</b>"));
        assert_eq!(html.matches("type=\"radio\"").count(), 1);
        assert!(html.contains("确认绑定"));

        let empty = json!({ "instance_id": "i-1", "subscription_status": "active", "can_confirm": false,
                            "reason": "no_organizations", "binding": null, "orgs": [] });
        let html = render(
            "bind.html",
            Lang::En,
            json!({
                "instance_id": "i-1", "aliyun_account_id": "1688", "sub_status": "active", "sub_status_label": "Active",
                "opts": empty, "selected": null, "error": "x", "binding": null, "bound_org_url": null,
                "action": "/bind/i-1", "processing_url": "/p", "support_url": SUPPORT_URL,
            }),
        );
        assert!(html.contains("disabled") && html.contains("open a ticket"));

        let org = crate::domain::organization::Organization {
            history: vec![crate::domain::organization::HistoryEntry {
                at: Utc::now(),
                kind: "switched".into(),
                instance_id: Some("i-2".into()),
                aliyun_account_id: Some("222".into()),
                from_aliyun_account_id: Some("111".into()),
                reason: None,
                detail: String::new(),
            }],
            ..Default::default()
        };
        let Ok(org_id) = OrgId::parse("org_x") else { panic!("org id") };
        let view = crate::app::orgs::billing_view(&org_id, crate::domain::organization::State::Frozen, &org);
        for lang in [Lang::Zh, Lang::En] {
            let html =
                render("billing.html", lang, json!({ "billing": view, "role": "owner", "market_url": "https://m" }));
            assert!(html.contains("111") && html.contains("222"));
        }
        for status in ["pending", "bound", "refused"] {
            let html = render(
                "processing.html",
                Lang::Zh,
                json!({ "instance_id": "i-1", "status": status, "code": null, "reason": "r", "billing_url": "/b",
                        "bind_url": "/bind/i-1", "poll_url": "/api" }),
            );
            assert!(html.contains("Zilliz Cloud"), "{status}");
        }
        for t in ["login.html", "register.html"] {
            render(
                t,
                Lang::En,
                json!({ "next": "/bind/i", "next_q": "?next=%2Fbind", "error": null, "values": { "email": "", "name": "" },
                        "from_sso": true }),
            );
        }
        render(
            "message.html",
            Lang::Zh,
            json!({ "title": "t", "text": "x", "code": "c", "link": { "href": "/", "label": "l" } }),
        );
        render("home.html", Lang::Zh, json!({ "orgs": [], "subscriptions": [] }));
    }

    #[test]
    fn accept_language_picks_the_preferred_of_zh_and_en() {
        let req =
            |v: &str| actix_web::test::TestRequest::default().insert_header(("accept-language", v)).to_http_request();
        assert_eq!(accept_language(&req("en-US,en;q=0.9")), Some(Lang::En));
        assert_eq!(accept_language(&req("zh-CN,zh;q=0.9,en;q=0.8")), Some(Lang::Zh));
        assert_eq!(accept_language(&req("fr, en;q=0.5, zh;q=0.7")), Some(Lang::Zh));
        assert_eq!(accept_language(&req("fr")), None);
    }
}
