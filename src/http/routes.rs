//! The route table: every (method, path) the app serves and who may call it.
//!
//! Why a table beside the actix registrations: the OpenAPI test compares the spec to it, the access test walks
//! it with no credentials, the wrong role and another organization's user, and a probe test checks that each
//! entry is really served. A route added to `configure` but not here fails those tests instead of slipping by.

/// Who a route admits. The access test derives the refusals it expects from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes, metrics, static assets, the API description, login and registration.
    Public,
    /// The marketplace: the SPI token (an MD5 over the sorted parameters and the shared key) in the request.
    Spi,
    /// The marketplace's 免登 hand-off: a signed, fresh, single-use token in the query.
    Sso,
    /// A logged-in user (session cookie); the JSON API answers 401 without one.
    User,
    /// A logged-in user who belongs to the organization in the path (others get 403/404).
    Member,
    /// A logged-in user on a page: without a session the page redirects to the login page.
    UserPage,
    /// A logged-in member of the organization in the path, on a page (redirect without a session).
    MemberPage,
    /// The `service` bearer token (Zilliz Cloud's own services).
    Service,
    /// The `operator` bearer token.
    Operator,
    /// An operator in the browser: the console's session cookie (redirect to the console login without one).
    OperatorPage,
    /// Another node of the cluster: a request signed with the cluster secret (401 otherwise, and always on sled).
    Node,
}

/// One route of the app. `path` uses actix's `{name}` segments, as OpenAPI does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

const fn r(method: &'static str, path: &'static str, access: Access) -> Route {
    Route { method, path, access }
}

use Access::*;

/// Every route, in the order `super::configure` registers them.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz", Public),
    r("GET", "/readyz", Public),
    r("GET", "/metrics", Public),
    r("GET", "/openapi.json", Public),
    r("GET", "/api/docs", Public),
    r("GET", "/aliyun/spi", Spi),
    r("POST", "/aliyun/spi", Spi),
    r("GET", "/aliyun/sso", Sso),
    // Operators.
    r("GET", "/api/v1/ops/entities", Operator),
    r("GET", "/api/v1/ops/entities/{kind}/{id}", Operator),
    r("GET", "/api/v1/ops/entities/{kind}/{id}/journal", Operator),
    r("GET", "/api/v1/ops/timers", Operator),
    r("POST", "/api/v1/ops/orgs", Operator),
    r("POST", "/api/v1/ops/entities/{kind}/{id}/actions/{action}", Operator),
    r("POST", "/api/v1/ops/windows/resolve", Operator),
    r("GET", "/api/v1/ops/pushes", Operator),
    r("POST", "/api/v1/ops/pushes/{switch}", Operator),
    r("GET", "/api/v1/ops/audit", Operator),
    r("GET", "/api/v1/ops/attention", Operator),
    r("POST", "/api/v1/ops/entities/{kind}/{id}/attention/dismiss", Operator),
    r("GET", "/api/v1/ops/orgs/{org_id}/metering", Operator),
    r("GET", "/api/v1/ops/finance/pushed-windows", Operator),
    r("GET", "/api/v1/ops/cluster", Operator),
    r("GET", "/api/v1/ops/export", Operator),
    // Users.
    r("POST", "/api/v1/accounts", Public),
    r("POST", "/api/v1/sessions", Public),
    r("DELETE", "/api/v1/sessions/current", User),
    r("GET", "/api/v1/me", User),
    r("POST", "/api/v1/me/email-verification", User),
    r("GET", "/api/v1/orgs", User),
    r("POST", "/api/v1/orgs/{org_id}/invitations", Member),
    r("GET", "/api/v1/orgs/{org_id}/billing", Member),
    r("POST", "/api/v1/orgs/{org_id}/leave", Member),
    r("POST", "/api/v1/invitations/{invitation_id}/accept", User),
    r("GET", "/api/v1/marketplace/aliyun/subscriptions", User),
    r("GET", "/api/v1/marketplace/aliyun/subscriptions/{instance_id}", User),
    r("GET", "/api/v1/marketplace/aliyun/subscriptions/{instance_id}/binding-options", User),
    r("POST", "/api/v1/marketplace/aliyun/subscriptions/{instance_id}/binding", User),
    // Zilliz Cloud's services.
    r("POST", "/api/v1/usage", Service),
    // Pages.
    r("GET", "/", UserPage),
    r("GET", "/login", Public),
    r("POST", "/login", Public),
    r("GET", "/register", Public),
    r("POST", "/register", Public),
    r("GET", "/verify-email", Public),
    r("POST", "/logout", UserPage),
    r("GET", "/bind/{instance_id}", UserPage),
    r("POST", "/bind/{instance_id}", UserPage),
    r("GET", "/bind/{instance_id}/processing", UserPage),
    r("GET", "/bind/{instance_id}/status", UserPage),
    r("GET", "/orgs/{org_id}/billing", MemberPage),
    r("GET", "/assets/{name}", Public),
    // The operator console.
    r("GET", "/console", OperatorPage),
    r("GET", "/console/login", Public),
    r("POST", "/console/login", Public),
    r("POST", "/console/logout", OperatorPage),
    r("GET", "/console/timers", OperatorPage),
    r("GET", "/console/windows", OperatorPage),
    r("POST", "/console/windows", OperatorPage),
    r("POST", "/console/pushes/{switch}", OperatorPage),
    r("GET", "/console/audit", OperatorPage),
    r("GET", "/console/cluster", OperatorPage),
    r("GET", "/console/assets/{name}", Public),
    r("GET", "/console/entities/{kind}/{id}", OperatorPage),
    r("POST", "/console/entities/{kind}/{id}/actions/{action}", OperatorPage),
    // Between nodes.
    r("POST", "/internal/v1/deliver", Node),
    r("POST", "/internal/v1/call", Node),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_route_is_listed_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(seen.insert((route.method, route.path)), "{} {} listed twice", route.method, route.path);
        }
    }
}
