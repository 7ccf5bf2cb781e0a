//! Declared HTTP routes (`routes.paths` in the config): route templates
//! written as axum writes them (`/api/ok`, `/users/{id}`, `/files/{*path}`),
//! matched without axum's router.
//!
//! axum sets the matched path inside its router, so a stack that keys its
//! breakers or a rate limit by route has to be applied per route
//! (`Router::layer`), where axum clones the route's service, the stack's
//! with it, for every request. With the routes declared, the stack finds a
//! request's route on its own and can wrap the whole router: the stack's
//! per-route breakers and the rate limit's `route` key both use this.
//!
//! Matching follows axum's router (matchit): a literal segment matches
//! itself, `{name}` one non-empty segment, `{*name}` (last only) the
//! non-empty rest of the path; where several templates match, the one
//! whose first differing segment is the more specific wins (literal, then
//! `{name}`, then `{*name}`). The templates are sorted in that order when
//! the stack is built, so a request takes the first that matches.
//! `tests/circuit_breaker/one_breaker_per_route.rs` checks the choice
//! against axum's own router.

// Declared only through a config (`routes.paths`); the rate limit's key
// reads it in every build, so without the feature only the parsing is idle.
#![cfg_attr(not(feature = "config"), allow(dead_code))]

use std::cmp::Ordering;
use std::sync::Arc;

/// The route of a request no declared template (nor axum) names: one name
/// for all of them, so that a client cannot make up routes.
pub(crate) const UNMATCHED: &str = "unmatched";

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `{name}`: one non-empty segment.
    Param,
    /// `{*name}`: the non-empty rest of the path (last segment only).
    Rest,
}

impl Segment {
    /// How general the segment is: a more specific one wins a tie.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param => 1,
            Segment::Rest => 2,
        }
    }
}

/// A parsed template and its name (the template as written).
#[derive(Debug)]
struct Template {
    name: Arc<str>,
    segments: Box<[Segment]>,
}

impl Template {
    /// Parses `/a/{b}/{*c}`, or says what is wrong with it.
    fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("must start with `/`".into());
        };
        if text.contains(['?', '#']) {
            return Err("is a path only: no `?` or `#`".into());
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut names: Vec<&str> = Vec::new();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment =
                if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let (name, segment) = match inner.strip_prefix('*') {
                        Some(name) => (name, Segment::Rest),
                        None => (inner, Segment::Param),
                    };
                    if name.is_empty() || name.contains(['{', '}', '*']) {
                        return Err(format!(
                            "`{part}`: a parameter is `{{name}}` or `{{*name}}`"
                        ));
                    }
                    if names.contains(&name) {
                        return Err(format!("names the parameter `{name}` twice"));
                    }
                    names.push(name);
                    if segment == Segment::Rest && i + 1 != parts.len() {
                        return Err(format!("`{part}`: a catch-all must be the last segment"));
                    }
                    segment
                } else if part.contains(['{', '}']) {
                    return Err(format!(
                        "`{part}`: a parameter must be a whole segment, `{{name}}` or `{{*name}}`"
                    ));
                } else if let Some(name) = part.strip_prefix(':') {
                    return Err(format!("`{part}` is axum 0.7's syntax: write `{{{name}}}`"));
                } else if part.starts_with('*') {
                    return Err(format!("`{part}` is axum 0.7's syntax: write `{{{part}}}`"));
                } else {
                    Segment::Literal((*part).into())
                };
            segments.push(segment);
        }
        Ok(Self {
            name: text.into(),
            segments: segments.into(),
        })
    }

    /// The precedence order: segment by segment, literal before `{name}`
    /// before `{*name}`; then the text, so the order is total.
    fn precedence(&self, other: &Self) -> Ordering {
        let ranks = |t: &Self| t.segments.iter().map(Segment::rank).collect::<Vec<_>>();
        ranks(self)
            .cmp(&ranks(other))
            .then_with(|| self.name.cmp(&other.name))
    }

    /// Do the two templates match exactly the same paths (`/a/{x}` and
    /// `/a/{y}`)? axum refuses such a pair; so do we.
    fn same_paths(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(other.segments.iter())
                .all(|(a, b)| a == b)
    }

    /// Does `path` (a request's path, which starts with `/`) match?
    /// Byte by byte, in one pass: a request pays for a few comparisons,
    /// not a string search per segment.
    #[inline]
    fn matches(&self, path: &str) -> bool {
        let p = path.as_bytes();
        if p.first() != Some(&b'/') {
            return false;
        }
        let mut at = 1;
        let last = self.segments.len() - 1;
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => return at < p.len(),
                Segment::Literal(text) => {
                    let text = text.as_bytes();
                    if p.get(at..at + text.len()) != Some(text) {
                        return false;
                    }
                    at += text.len();
                }
                Segment::Param => {
                    let start = at;
                    while at < p.len() && p[at] != b'/' {
                        at += 1;
                    }
                    if at == start {
                        return false;
                    }
                }
            }
            // The segment must end here: at the path's end for the last
            // one, at a `/` for the others.
            if i == last {
                return at == p.len();
            }
            if p.get(at) != Some(&b'/') {
                return false;
            }
            at += 1;
        }
        false
    }
}

/// The declared routes: the templates without parameters, compared whole
/// (such a template, when it matches, is always the most specific), then
/// the others in precedence order.
#[derive(Debug, Default)]
pub(crate) struct RoutePaths {
    exact: Box<[Arc<str>]>,
    templates: Box<[Template]>,
}

impl RoutePaths {
    /// Parses every template, or reports every problem with the index of
    /// the template it is about (the config names it `paths[i]`).
    pub(crate) fn new(paths: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let mut parsed: Vec<(usize, Template)> = Vec::with_capacity(paths.len());
        for (i, text) in paths.iter().enumerate() {
            match Template::parse(text) {
                Err(message) => errors.push((i, message)),
                Ok(t) => match parsed.iter().find(|(_, p)| p.same_paths(&t)) {
                    Some((j, p)) if *p.name == **text => {
                        errors.push((i, format!("is listed twice (paths[{j}])")))
                    }
                    Some((j, p)) => errors.push((
                        i,
                        format!(
                            "matches the same requests as paths[{j}] (`{}`): only the parameters' names differ",
                            p.name
                        ),
                    )),
                    None => parsed.push((i, t)),
                },
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let (exact, mut templates): (Vec<Template>, Vec<Template>) = parsed
            .into_iter()
            .map(|(_, t)| t)
            .partition(|t| t.segments.iter().all(|s| matches!(s, Segment::Literal(_))));
        templates.sort_by(Template::precedence);
        Ok(Self {
            exact: exact.into_iter().map(|t| t.name).collect(),
            templates: templates.into(),
        })
    }

    /// No template is declared.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.templates.is_empty()
    }

    /// The template `path` matches, if any: the one that is the path
    /// itself, else the first in precedence order.
    #[inline]
    pub(crate) fn find(&self, path: &str) -> Option<&Arc<str>> {
        self.position(path).map(|i| self.name(i))
    }

    /// The number of the template `path` matches (as [`find`](Self::find)
    /// finds it), an index into [`names`](Self::names).
    #[inline]
    pub(crate) fn position(&self, path: &str) -> Option<usize> {
        if let Some(i) = self.exact.iter().position(|e| **e == *path) {
            return Some(i);
        }
        self.templates
            .iter()
            .position(|t| t.matches(path))
            .map(|i| self.exact.len() + i)
    }

    /// The template numbered `i` by [`position`](Self::position).
    #[inline]
    fn name(&self, i: usize) -> &Arc<str> {
        match self.exact.get(i) {
            Some(name) => name,
            None => &self.templates[i - self.exact.len()].name,
        }
    }

    /// Every template, in the order [`position`](Self::position) numbers
    /// them.
    pub(crate) fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.exact
            .iter()
            .chain(self.templates.iter().map(|t| &t.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(paths: &[&str]) -> RoutePaths {
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        RoutePaths::new(&owned).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(paths: &[&str]) -> Vec<String> {
        let owned: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        RoutePaths::new(&owned)
            .expect_err("invalid")
            .iter()
            .map(|(i, message)| format!("paths[{i}]: {message}"))
            .collect()
    }

    #[test]
    fn segments_match_as_axum_matches_them() {
        let r = routes(&["/", "/a/", "/a", "/users/{id}", "/files/{*path}"]);
        let found = |p: &str| r.find(p).map(|n| n.to_string());
        assert_eq!(found("/").as_deref(), Some("/"));
        assert_eq!(found("/a").as_deref(), Some("/a"));
        // A trailing slash is a route of its own.
        assert_eq!(found("/a/").as_deref(), Some("/a/"));
        assert_eq!(found("/users/7").as_deref(), Some("/users/{id}"));
        // A parameter is one non-empty segment.
        assert_eq!(found("/users/"), None);
        assert_eq!(found("/users"), None);
        assert_eq!(found("/users/7/x"), None);
        // A catch-all takes the non-empty rest, slashes included.
        assert_eq!(found("/files/a/b/c").as_deref(), Some("/files/{*path}"));
        assert_eq!(found("/files/a/").as_deref(), Some("/files/{*path}"));
        assert_eq!(found("/files/"), None);
        assert_eq!(found("/files"), None);
        assert_eq!(found("/b"), None);
        assert_eq!(found(""), None);
    }

    #[test]
    fn the_more_specific_segment_wins() {
        // Declared in the opposite order on purpose.
        let r = routes(&[
            "/{*any}",
            "/{a}/b",
            "/x/{b}",
            "/users/{id}",
            "/users/new",
            "/users/{id}/{*rest}",
            "/users/{id}/posts",
        ]);
        let found = |p: &str| r.find(p).unwrap().to_string();
        assert_eq!(found("/users/new"), "/users/new");
        assert_eq!(found("/users/7"), "/users/{id}");
        assert_eq!(found("/users/7/posts"), "/users/{id}/posts");
        assert_eq!(found("/users/7/likes"), "/users/{id}/{*rest}");
        // The first segment decides first: `/x/{b}` beats `/{a}/b`.
        assert_eq!(found("/x/b"), "/x/{b}");
        assert_eq!(found("/y/b"), "/{a}/b");
        assert_eq!(found("/y/c"), "/{*any}");
        assert_eq!(found("/users"), "/{*any}");
        // Every template has one number, and a path's number names the
        // template it matches.
        let names: Vec<&Arc<str>> = r.names().collect();
        assert_eq!(names.len(), 7);
        for path in [
            "/users/new",
            "/users/7",
            "/users/7/posts",
            "/x/b",
            "/y/b",
            "/y/c",
        ] {
            let i = r.position(path).unwrap();
            assert_eq!(names[i], r.find(path).unwrap(), "{path}");
        }
        assert_eq!(routes(&["/a"]).position("/b"), None);
    }

    #[test]
    fn bad_templates_are_named_with_their_index() {
        let e = errors(&[
            "api/ok",
            "/a/{}",
            "/a/{*rest}/b",
            "/a/x{id}",
            "/a/:id",
            "/a/*rest",
            "/a/{id}/{id}",
            "/a?b",
            "/ok",
            "/ok",
            "/u/{id}",
            "/u/{name}",
        ]);
        let expect = [
            "paths[0]: must start with `/`",
            "paths[1]: `{}`: a parameter is `{name}` or `{*name}`",
            "paths[2]: `{*rest}`: a catch-all must be the last segment",
            "paths[3]: `x{id}`: a parameter must be a whole segment",
            "paths[4]: `:id` is axum 0.7's syntax: write `{id}`",
            "paths[5]: `*rest` is axum 0.7's syntax: write `{*rest}`",
            "paths[6]: names the parameter `id` twice",
            "paths[7]: is a path only",
            "paths[9]: is listed twice (paths[8])",
            "paths[11]: matches the same requests as paths[10] (`/u/{id}`)",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expect) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn nothing_declared_finds_nothing() {
        let r = routes(&[]);
        assert_eq!(r.find("/"), None);
    }
}
