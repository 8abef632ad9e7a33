//! Exclusive XML Canonicalization 1.0 without comments
//! (<https://www.w3.org/TR/xml-exc-c14n/>), of one element's subtree, optionally leaving out
//! one descendant (the enveloped signature).
//!
//! Only what a parsed, DTD-free, comment-free document can contain is handled: elements,
//! attributes and text (see [`crate::xml::parse`]). Namespace declarations are rendered where
//! they are visibly used (the element's own prefix, its attributes' prefixes) or named in the
//! `InclusiveNamespaces PrefixList`, unless the nearest rendered ancestor declared the same.

use roxmltree::Node;

use crate::xml::{attribute_prefix, element_prefix, XML_NS};

/// The canonical form of `apex`'s subtree without `exclude`'s subtree. `inclusive` is the
/// transform's prefix list (`#default` for the default namespace).
pub fn canonicalize(apex: Node, exclude: Option<Node>, inclusive: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut rendered = Vec::new();
    element(&mut out, apex, exclude, inclusive, &mut rendered);
    out
}

/// Declarations rendered by output ancestors: (prefix, URI), innermost last; `""` is the
/// default namespace.
type Rendered<'a> = Vec<(&'a str, &'a str)>;

fn element<'a>(
    out: &mut Vec<u8>,
    e: Node<'a, '_>,
    exclude: Option<Node>,
    inclusive: &[String],
    rendered: &mut Rendered<'a>,
) {
    let doc = e.document();
    let prefix = element_prefix(e).unwrap_or("");
    let mut needed: Vec<(&'a str, &'a str)> = Vec::new();
    needed.push((prefix, e.tag_name().namespace().unwrap_or("")));
    for a in e.attributes() {
        if let (Some(p), Some(uri)) = (attribute_prefix(doc, &a), a.namespace()) {
            if p != "xml" {
                needed.push((p, uri));
            }
        }
    }
    for p in inclusive {
        let p = if p == "#default" { "" } else { p.as_str() };
        if let Some(ns) = e.namespaces().find(|ns| ns.name().unwrap_or("") == p) {
            if p != "xml" {
                needed.push((ns.name().unwrap_or(""), ns.uri()));
            }
        }
    }
    needed.sort_unstable();
    needed.dedup();
    let mark = rendered.len();
    let mut decls = Vec::new();
    for (p, uri) in needed {
        let current = rendered
            .iter()
            .rev()
            .find(|(q, _)| *q == p)
            .map(|(_, u)| *u)
            .unwrap_or("");
        if current == uri {
            continue;
        }
        decls.push((p, uri));
        rendered.push((p, uri));
    }

    out.push(b'<');
    qname(out, prefix, e.tag_name().name());
    for (p, uri) in &decls {
        if p.is_empty() {
            out.extend_from_slice(b" xmlns=\"");
        } else {
            out.extend_from_slice(b" xmlns:");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"=\"");
        }
        attr_value(out, uri);
        out.push(b'"');
    }
    let mut attrs: Vec<_> = e.attributes().collect();
    attrs.sort_by(|a, b| {
        (a.namespace().unwrap_or(""), a.name()).cmp(&(b.namespace().unwrap_or(""), b.name()))
    });
    for a in attrs {
        out.push(b' ');
        let p = match a.namespace() {
            Some(XML_NS) => "xml",
            Some(_) => attribute_prefix(doc, &a).unwrap_or(""),
            None => "",
        };
        qname(out, p, a.name());
        out.extend_from_slice(b"=\"");
        attr_value(out, a.value());
        out.push(b'"');
    }
    out.push(b'>');
    for c in e.children() {
        if exclude.is_some_and(|x| x == c) {
            continue;
        }
        if c.is_element() {
            element(out, c, exclude, inclusive, rendered);
        } else if c.is_text() {
            text(out, c.text().unwrap_or_default());
        }
    }
    out.extend_from_slice(b"</");
    qname(out, prefix, e.tag_name().name());
    out.push(b'>');
    rendered.truncate(mark);
}

fn qname(out: &mut Vec<u8>, prefix: &str, local: &str) {
    if !prefix.is_empty() {
        out.extend_from_slice(prefix.as_bytes());
        out.push(b':');
    }
    out.extend_from_slice(local.as_bytes());
}

fn text(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn attr_value(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\t' => out.extend_from_slice(b"&#x9;"),
            '\n' => out.extend_from_slice(b"&#xA;"),
            '\r' => out.extend_from_slice(b"&#xD;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse;

    fn c14n(xml: &str, inclusive: &[&str]) -> String {
        let doc = parse(xml).expect("parse");
        let inc: Vec<String> = inclusive.iter().map(|s| (*s).to_owned()).collect();
        String::from_utf8(canonicalize(doc.root_element(), None, &inc)).expect("utf8")
    }

    #[test]
    fn renders_only_visibly_used_namespaces_sorted_and_escaped() {
        let xml = r#"<?xml version="1.0"?>
<a:Root xmlns:z="urn:z" xmlns:a="urn:a" xmlns="urn:d" b="2" z:c="3" a:b="1"><Child  x = 'q"&amp;&#9;' >t&gt;&#xD;<z:E/></Child></a:Root>"#;
        assert_eq!(
            c14n(xml, &[]),
            "<a:Root xmlns:a=\"urn:a\" xmlns:z=\"urn:z\" b=\"2\" a:b=\"1\" z:c=\"3\">\
             <Child xmlns=\"urn:d\" x=\"q&quot;&amp;&#x9;\">t&gt;&#xD;<z:E></z:E></Child></a:Root>"
        );
    }

    #[test]
    fn the_prefix_list_renders_unused_namespaces_once() {
        let xml = r#"<r xmlns:xs="urn:xs" xmlns:a="urn:a"><a:v><a:w/></a:v></r>"#;
        let doc = parse(xml).expect("parse");
        let v = doc.root_element().first_element_child().expect("v");
        let out = canonicalize(v, None, &["xs".to_owned()]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<a:v xmlns:a=\"urn:a\" xmlns:xs=\"urn:xs\"><a:w></a:w></a:v>"
        );
    }

    #[test]
    fn an_undeclared_default_is_reset_only_under_a_rendered_default() {
        let xml = r#"<r xmlns="urn:d"><s xmlns=""><t/></s></r>"#;
        assert_eq!(
            c14n(xml, &[]),
            "<r xmlns=\"urn:d\"><s xmlns=\"\"><t></t></s></r>"
        );
        let xml = r#"<p:r xmlns:p="urn:p"><s/></p:r>"#;
        assert_eq!(c14n(xml, &[]), "<p:r xmlns:p=\"urn:p\"><s></s></p:r>");
    }

    #[test]
    fn an_excluded_subtree_leaves_nothing_behind() {
        let xml = r#"<r ID="x"><a/><sig><k/></sig><b/></r>"#;
        let doc = parse(xml).expect("parse");
        let sig = doc
            .descendants()
            .find(|n| n.has_tag_name("sig"))
            .expect("sig");
        let out = canonicalize(doc.root_element(), Some(sig), &[]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "<r ID=\"x\"><a></a><b></b></r>"
        );
    }
}
