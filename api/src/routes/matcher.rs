//! The path matcher, derived from [`ROUTES`]: path templates compiled once into segments,
//! the most literal template that matches a path wins (`/dead-letters/replay` before
//! `/dead-letters/{id}`), its parameters are percent-decoded and length-checked, and its
//! methods give the route or the `405 Allow` list. No allocation for a path without
//! percent-escapes.

use std::borrow::Cow;
use std::sync::LazyLock;

use super::{Route, AUTHKEY_NAME_MAX, DEAD_LETTER_ID_MAX, ROUTES, SERVICE_MAX, USERNAME_MAX};
use crate::error::Failure;

/// Most segments of any path template (the longest has 7).
const MAX_SEGMENTS: usize = 8;

/// A parameter of a path template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    /// `{service}`.
    Service,
    /// `{username}`.
    Username,
    /// `{name}`: an authkey's name.
    AuthkeyName,
    /// `{id}`: a dead letter's id.
    DeadLetterId,
    /// `{tx_id}`: a transaction id, kept as written (the handler checks its hex form).
    TxId,
}

impl Param {
    fn parse(segment: &str) -> Option<Param> {
        Some(match segment {
            "{service}" => Param::Service,
            "{username}" => Param::Username,
            "{name}" => Param::AuthkeyName,
            "{id}" => Param::DeadLetterId,
            "{tx_id}" => Param::TxId,
            _ => return None,
        })
    }

    /// The longest value (bytes) and what it is called in errors; `None`: not decoded.
    fn limit(self) -> Option<(usize, &'static str)> {
        match self {
            Param::Service => Some((SERVICE_MAX, "service name")),
            Param::Username => Some((USERNAME_MAX, "username")),
            Param::AuthkeyName => Some((AUTHKEY_NAME_MAX, "authkey name")),
            Param::DeadLetterId => Some((DEAD_LETTER_ID_MAX, "dead letter id")),
            Param::TxId => None,
        }
    }
}

/// A segment of a path template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(Param),
}

/// One path template with its routes (one per method).
struct Template {
    segments: Vec<Segment>,
    routes: Vec<&'static Route>,
    /// The `Allow` header of a `405` on it: its methods, `GET, POST, PUT, DELETE` order.
    allow: String,
}

impl Template {
    fn matches(&self, path: &[&str]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(t, s)| match t {
                Segment::Literal(l) => l == s,
                Segment::Param(_) => true,
            })
    }
}

/// The templates of [`ROUTES`], most literal first: of two templates that match one path,
/// the one with a literal where they first differ comes first.
static TEMPLATES: LazyLock<Vec<Template>> = LazyLock::new(|| {
    let mut templates: Vec<(&'static str, Template)> = Vec::new();
    for route in ROUTES {
        match templates.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, t)) => t.routes.push(route),
            None => templates.push((
                route.path,
                Template {
                    segments: route
                        .path
                        .split('/')
                        .skip(1)
                        .map(|s| Param::parse(s).map_or(Segment::Literal(s), Segment::Param))
                        .collect(),
                    routes: vec![route],
                    allow: String::new(),
                },
            )),
        }
    }
    let mut templates: Vec<Template> = templates.into_iter().map(|(_, t)| t).collect();
    for t in &mut templates {
        let rank = |m: &str| {
            ["GET", "POST", "PUT", "DELETE"]
                .iter()
                .position(|k| *k == m)
                .unwrap_or(usize::MAX)
        };
        let mut methods: Vec<&str> = t.routes.iter().map(|r| r.method).collect();
        methods.sort_by_key(|m| rank(m));
        t.allow = methods.join(", ");
    }
    templates.sort_by_key(|t| {
        t.segments
            .iter()
            .map(|s| matches!(s, Segment::Param(_)))
            .collect::<Vec<bool>>()
    });
    templates
});

/// Why a request matches no route.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    /// No such route.
    NotFound,
    /// A segment is not valid percent-encoded UTF-8.
    BadEncoding,
    /// A name is empty or too long (what it is called).
    BadLength(&'static str),
    /// The path exists, the method does not: the methods it has.
    MethodNotAllowed(&'static str),
}

/// A token's service and username, from the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tok<'a> {
    pub service: &'a str,
    pub username: &'a str,
}

/// The decoded parameters of a matched path.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Params<'a> {
    service: Option<Cow<'a, str>>,
    username: Option<Cow<'a, str>>,
    authkey_name: Option<Cow<'a, str>>,
    dead_letter_id: Option<Cow<'a, str>>,
    tx_id: Option<&'a str>,
}

/// A parameter the route's template does not have: a mistake in [`ROUTES`] (tested).
fn undeclared() -> Failure {
    Failure::internal()
}

impl<'a> Params<'a> {
    /// `{service}`.
    pub fn service(&self) -> Result<&str, Failure> {
        self.service.as_deref().ok_or_else(undeclared)
    }

    /// `{service}` and `{username}`.
    pub fn token(&self) -> Result<Tok<'_>, Failure> {
        Ok(Tok {
            service: self.service()?,
            username: self.username.as_deref().ok_or_else(undeclared)?,
        })
    }

    /// `{name}`.
    pub fn authkey_name(&self) -> Result<&str, Failure> {
        self.authkey_name.as_deref().ok_or_else(undeclared)
    }

    /// `{id}`.
    pub fn dead_letter_id(&self) -> Result<&str, Failure> {
        self.dead_letter_id.as_deref().ok_or_else(undeclared)
    }

    /// `{tx_id}`, as written.
    pub fn tx_id(&self) -> Result<&'a str, Failure> {
        self.tx_id.ok_or_else(undeclared)
    }

    fn set(&mut self, param: Param, segment: &'a str) -> Result<(), PathError> {
        let value = match param.limit() {
            Some((max, what)) => decode(segment, max, what)?,
            None => Cow::Borrowed(segment),
        };
        match param {
            Param::Service => self.service = Some(value),
            Param::Username => self.username = Some(value),
            Param::AuthkeyName => self.authkey_name = Some(value),
            Param::DeadLetterId => self.dead_letter_id = Some(value),
            Param::TxId => self.tx_id = Some(segment),
        }
        Ok(())
    }
}

fn decode<'a>(seg: &'a str, max: usize, what: &'static str) -> Result<Cow<'a, str>, PathError> {
    let s = if seg.contains('%') {
        percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| PathError::BadEncoding)?
    } else {
        // Nothing to decode: the segment is already UTF-8 and is its own value.
        Cow::Borrowed(seg)
    };
    if s.is_empty() || s.len() > max {
        return Err(PathError::BadLength(what));
    }
    Ok(s)
}

/// Matches a request path (without the query) and method: the route and its parameters.
/// The parameters are decoded before the method is looked at (a bad name is a `400` whatever
/// the method).
pub(crate) fn resolve<'a>(
    path: &'a str,
    method: &str,
) -> Result<(&'static Route, Params<'a>), PathError> {
    let mut it = path.split('/');
    if it.next() != Some("") {
        return Err(PathError::NotFound);
    }
    let mut segments = [""; MAX_SEGMENTS];
    let mut n = 0;
    for s in it {
        *segments.get_mut(n).ok_or(PathError::NotFound)? = s;
        n += 1;
    }
    let segments = segments.get(..n).ok_or(PathError::NotFound)?;
    let template = TEMPLATES
        .iter()
        .find(|t| t.matches(segments))
        .ok_or(PathError::NotFound)?;
    let mut params = Params::default();
    for (t, s) in template.segments.iter().zip(segments) {
        if let Segment::Param(p) = t {
            params.set(*p, s)?;
        }
    }
    match template.routes.iter().find(|r| r.method == method) {
        Some(route) => Ok((*route, params)),
        None => Err(PathError::MethodNotAllowed(&template.allow)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::routes::Operation;

    fn op(path: &str, method: &str) -> Operation {
        resolve(path, method).unwrap().0.operation
    }

    #[test]
    fn names_are_percent_decoded_after_splitting() {
        let (route, p) = resolve("/v1/services/b%C3%A4nk/tokens/a%2Fb%20c/state", "PUT").unwrap();
        assert_eq!(route.operation, Operation::TokenForce);
        assert_eq!(
            p.token().unwrap(),
            Tok {
                service: "bänk",
                username: "a/b c"
            }
        );
        assert_eq!(
            resolve("/v1/services/%FF", "GET").unwrap_err(),
            PathError::BadEncoding
        );
        assert_eq!(
            resolve("/v1/services//tokens/x", "GET").unwrap_err(),
            PathError::BadLength("service name")
        );
        let long = "u".repeat(USERNAME_MAX + 1);
        assert_eq!(
            resolve(&format!("/v1/services/s/tokens/{long}"), "GET").unwrap_err(),
            PathError::BadLength("username")
        );
        assert_eq!(
            resolve("/v1/services/s/tokens/u/nope", "GET").unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(resolve("/v1", "GET").unwrap_err(), PathError::NotFound);
        assert_eq!(
            op("/v1/webhooks/dead-letters", "GET"),
            Operation::DeadLetterList
        );
        assert_eq!(
            op("/v1/webhooks/dead-letters/replay", "POST"),
            Operation::DeadLetterReplayAll
        );
        let (route, p) = resolve("/v1/webhooks/dead-letters/msg_%30a/replay", "POST").unwrap();
        assert_eq!(
            (route.operation, p.dead_letter_id().unwrap()),
            (Operation::DeadLetterReplay, "msg_0a")
        );
        let (route, p) = resolve("/v1/webhooks/dead-letters/msg_1", "DELETE").unwrap();
        assert_eq!(
            (route.operation, p.dead_letter_id().unwrap()),
            (Operation::DeadLetterDelete, "msg_1")
        );
        assert_eq!(
            op("/v1/webhooks/disabled", "GET"),
            Operation::WebhookDisabledList
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters//replay", "POST").unwrap_err(),
            PathError::BadLength("dead letter id")
        );
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/x/y", "GET").unwrap_err(),
            PathError::NotFound
        );
        for path in [
            "/v1/webhooks",
            "/healthz/",
            "healthz",
            "/a/b/c/d/e/f/g/h/i/j",
        ] {
            assert_eq!(resolve(path, "GET").unwrap_err(), PathError::NotFound);
        }
        // A transaction id is kept as written.
        let (_, p) = resolve("/v1/services/s/tokens/u/transactions/%41", "GET").unwrap();
        assert_eq!(p.tx_id().unwrap(), "%41");
    }

    #[test]
    fn literal_segments_win_and_methods_give_the_allow_list() {
        // `replay` is a literal of its own template, never a dead letter's id.
        assert_eq!(
            resolve("/v1/webhooks/dead-letters/replay", "DELETE").unwrap_err(),
            PathError::MethodNotAllowed("POST")
        );
        assert_eq!(
            resolve("/healthz", "POST").unwrap_err(),
            PathError::MethodNotAllowed("GET")
        );
        assert_eq!(
            resolve("/v1/services", "PATCH").unwrap_err(),
            PathError::MethodNotAllowed("GET, POST")
        );
        assert_eq!(
            resolve("/v1/services/x", "POST").unwrap_err(),
            PathError::MethodNotAllowed("GET, PUT, DELETE")
        );
        assert_eq!(
            resolve("/v1/services/x/tokens/y", "PUT").unwrap_err(),
            PathError::MethodNotAllowed("GET, POST, DELETE")
        );
        // A bad name is reported whatever the method.
        assert_eq!(
            resolve("/v1/services/%FF", "PATCH").unwrap_err(),
            PathError::BadEncoding
        );
    }

    #[test]
    fn the_route_table_is_consistent() {
        for (i, route) in ROUTES.iter().enumerate() {
            assert_eq!(route.operation.index(), i, "{route:?} out of order");
            assert!(
                ["GET", "POST", "PUT", "DELETE"].contains(&route.method),
                "{route:?}"
            );
            // Every `{…}` is a known parameter, and every route is reachable.
            for s in route.path.split('/').skip(1) {
                assert!(
                    !s.contains('{') || Param::parse(s).is_some(),
                    "{route:?}: unknown parameter {s}"
                );
            }
            let path = route
                .path
                .replace("{service}", "s")
                .replace("{username}", "u")
                .replace("{name}", "n")
                .replace("{tx_id}", "t")
                .replace("{id}", "msg_1");
            let (found, p) = resolve(&path, route.method).unwrap();
            assert_eq!(found, route);
            // The parameters its path names are there for its handler.
            assert_eq!(p.service().is_ok(), route.path.contains("{service}"));
            assert_eq!(p.token().is_ok(), route.path.contains("{username}"));
            assert_eq!(p.authkey_name().is_ok(), route.path.contains("{name}"));
            assert_eq!(p.dead_letter_id().is_ok(), route.path.contains("{id}"));
            assert_eq!(p.tx_id().is_ok(), route.path.contains("{tx_id}"));
        }
        let ids: std::collections::HashSet<&str> =
            ROUTES.iter().map(|r| r.operation.id()).collect();
        assert_eq!(ids.len(), ROUTES.len(), "operation ids are unique");
        assert!(ROUTES
            .iter()
            .all(|r| r.path.split('/').count() <= MAX_SEGMENTS + 1));
    }
}
