//! Parsing untrusted XML, and the few questions asked of the tree that `roxmltree` does not
//! answer (the prefix an element or attribute was written with, which exclusive C14N needs).
//!
//! Parsing refuses any document type declaration (no DTD, so no entity can expand, be external
//! or change what an attribute means) and caps the number of nodes.

use roxmltree::{Document, Node, NodeType, ParsingOptions};

use crate::Error;

pub const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// Nodes a SAML response or metadata document may hold: far more than any real one needs, few
/// enough that parsing stays cheap.
const MAX_NODES: u32 = 20_000;

/// How deeply elements may nest (a real response nests about ten deep); canonicalization
/// recurses, so the bound is also its stack bound.
const MAX_DEPTH: usize = 64;

/// Namespaces in scope at any element, and entries in a prefix list: canonicalization looks
/// prefixes up per element, so both are bounded.
pub const MAX_NAMESPACES: usize = 32;

/// Parses a protocol message, refusing DTDs, comments and processing instructions anywhere
/// (exclusive C14N without comments drops comments, so text split by one —
/// `user@a.test<!---->.evil` — would be signed as one string and read as another by a careless
/// reader).
pub fn parse(text: &str) -> Result<Document<'_>, Error> {
    parse_with(text, false)
}

/// Parses trusted configuration (metadata), where comments are harmless.
pub fn parse_metadata(text: &str) -> Result<Document<'_>, Error> {
    parse_with(text, true)
}

/// Attributes one element may carry (a real one carries a handful).
const MAX_ATTRIBUTES: usize = 64;

/// CDATA sections a document may hold: the parser merges adjacent text by copying it whole,
/// so thousands of empty sections after a long text would be quadratic work.
const MAX_CDATA: usize = 16;

/// A linear pass over the raw text before the parser sees it: nesting depth, namespace
/// declarations in scope, attributes per element and CDATA sections, bounded. The parser recurses once per
/// level (a deep document would overflow the thread's stack) and copies the namespaces in scope
/// at every element that declares one (quadratic), so both are refused before it runs.
fn prescan(text: &str) -> Result<(), Error> {
    let b = text.as_bytes();
    let too = |what: &str| Err(Error::Malformed(what.to_owned()));
    let after = |from: usize, end: &[u8]| -> Result<usize, Error> {
        b.get(from..)
            .and_then(|r| r.windows(end.len()).position(|w| w == end))
            .map(|p| from + p + end.len())
            .ok_or_else(|| Error::Malformed("not well-formed XML (unterminated)".into()))
    };
    // Namespace declarations made by each open element.
    let mut open: Vec<usize> = Vec::new();
    let mut in_scope = 0usize;
    let mut cdata = 0usize;
    let mut i = 0;
    while let Some(p) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'<')) {
        i += p;
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = after(i + 4, b"-->")?;
        } else if rest.starts_with(b"<![CDATA[") {
            cdata += 1;
            if cdata > MAX_CDATA {
                return too("too many CDATA sections");
            }
            i = after(i + 9, b"]]>")?;
        } else if rest.starts_with(b"<?") {
            i = after(i + 2, b"?>")?;
        } else if rest.starts_with(b"<!") {
            return too("a document type declaration (DTD) is not accepted");
        } else if rest.starts_with(b"</") {
            i = after(i + 2, b">")?;
            in_scope -= open.pop().unwrap_or(0);
        } else {
            let (end, declarations) = start_tag(b, i)?;
            in_scope += declarations;
            if in_scope > MAX_NAMESPACES {
                return too("too many namespaces in scope");
            }
            if b[end - 2] == b'/' {
                in_scope -= declarations;
            } else {
                open.push(declarations);
                if open.len() > MAX_DEPTH {
                    return too("elements nest too deeply");
                }
            }
            i = end;
        }
    }
    Ok(())
}

/// The start tag at `b[at] == b'<'`: where it ends (after `>`) and how many of its attributes
/// declare a namespace. More than [`MAX_ATTRIBUTES`] attributes are refused.
fn start_tag(b: &[u8], at: usize) -> Result<(usize, usize), Error> {
    let (mut attributes, mut declarations) = (0, 0);
    let mut quote = None;
    let mut j = at + 1;
    while let Some(&c) = b.get(j) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(c),
            (None, b'=') => {
                attributes += 1;
                if attributes > MAX_ATTRIBUTES {
                    return Err(Error::Malformed(
                        "an element carries too many attributes".into(),
                    ));
                }
                let name_end = b[..j]
                    .iter()
                    .rposition(|c| !c.is_ascii_whitespace())
                    .map_or(0, |p| p + 1);
                let name_start = b[..name_end]
                    .iter()
                    .rposition(|c| c.is_ascii_whitespace() || *c == b'<')
                    .map_or(0, |p| p + 1);
                let name = &b[name_start..name_end];
                if name == b"xmlns" || name.starts_with(b"xmlns:") {
                    declarations += 1;
                }
            }
            (None, b'>') => return Ok((j + 1, declarations)),
            _ => {}
        }
        j += 1;
    }
    Err(Error::Malformed(
        "not well-formed XML (unterminated tag)".into(),
    ))
}

fn parse_with(text: &str, comments: bool) -> Result<Document<'_>, Error> {
    prescan(text)?;
    if contains_ascii_ci(text, "<!DOCTYPE") || contains_ascii_ci(text, "<!ENTITY") {
        return Err(Error::Malformed(
            "a document type declaration (DTD) is not accepted".into(),
        ));
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = Document::parse_with_options(text, options)
        .map_err(|e| Error::Malformed(format!("not well-formed XML (at {})", e.pos())))?;
    for n in doc.descendants() {
        match n.node_type() {
            NodeType::Comment if !comments => {
                return Err(Error::Malformed("XML comments are not accepted".into()))
            }
            NodeType::PI => {
                return Err(Error::Malformed(
                    "XML processing instructions are not accepted".into(),
                ))
            }
            // `ancestors` counts the node itself and the document root.
            NodeType::Element if n.ancestors().nth(MAX_DEPTH + 1).is_some() => {
                return Err(Error::Malformed("elements nest too deeply".into()))
            }
            NodeType::Element if n.namespaces().len() > MAX_NAMESPACES => {
                return Err(Error::Malformed("too many namespaces in scope".into()))
            }
            _ => {}
        }
    }
    Ok(doc)
}

fn contains_ascii_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether `n` is the element `{ns}local`.
pub fn is(n: Node, ns: &str, local: &str) -> bool {
    n.is_element() && n.tag_name().name() == local && n.tag_name().namespace() == Some(ns)
}

/// The element children of `n`. Text between them must be whitespace: mixed content in a
/// SAML structure is refused by the callers that use [`no_text`].
pub fn elements<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(Node::is_element)
}

/// `n` holds only elements and whitespace.
pub fn no_text(n: Node) -> Result<(), Error> {
    let stray = n
        .children()
        .any(|c| c.is_text() && !c.text().unwrap_or_default().trim().is_empty());
    if stray {
        return Err(Error::Malformed(format!(
            "unexpected text inside {}",
            n.tag_name().name()
        )));
    }
    Ok(())
}

/// The single child `{ns}local` of `n`: `None` if absent, an error if there are several.
pub fn only_child<'a, 'i>(
    n: Node<'a, 'i>,
    ns: &str,
    local: &str,
) -> Result<Option<Node<'a, 'i>>, Error> {
    let mut found = elements(n).filter(|c| is(*c, ns, local));
    let first = found.next();
    if found.next().is_some() {
        return Err(Error::Malformed(format!(
            "{} holds more than one {local}",
            n.tag_name().name()
        )));
    }
    Ok(first)
}

/// Like [`only_child`], but the child must be there.
pub fn required_child<'a, 'i>(
    n: Node<'a, 'i>,
    ns: &str,
    local: &str,
) -> Result<Node<'a, 'i>, Error> {
    only_child(n, ns, local)?
        .ok_or_else(|| Error::Malformed(format!("{} has no {local}", n.tag_name().name())))
}

/// The text content of a simple element: its children must all be text (no element, no
/// comment: those were refused at parse time), joined.
pub fn simple_text(n: Node) -> Result<String, Error> {
    let mut out = String::new();
    for c in n.children() {
        if !c.is_text() {
            return Err(Error::Malformed(format!(
                "{} must hold text only",
                n.tag_name().name()
            )));
        }
        out.push_str(c.text().unwrap_or_default());
    }
    Ok(out)
}

/// The prefix `n`'s start tag was written with (`None`: unprefixed). roxmltree resolves names
/// to namespaces but keeps positions; the qualified name is read back from the input.
pub fn element_prefix<'i>(n: Node<'_, 'i>) -> Option<&'i str> {
    let input = n.document().input_text();
    let rest = input.get(n.range().start + 1..)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(rest.len());
    let qname = &rest[..end];
    qname.split_once(':').map(|(p, _)| p)
}

/// The prefix an attribute was written with.
pub fn attribute_prefix<'i>(
    doc: &Document<'i>,
    a: &roxmltree::Attribute<'_, 'i>,
) -> Option<&'i str> {
    let qname = doc.input_text().get(a.range_qname())?;
    qname.split_once(':').map(|(p, _)| p)
}

/// Parses an `xs:dateTime` in UTC (`2024-05-01T12:00:00Z`, fractions allowed), as SAML
/// requires (SAML core §1.3.3).
pub fn instant(value: &str) -> Result<std::time::SystemTime, Error> {
    humantime::parse_rfc3339(value.trim())
        .map_err(|_| Error::Malformed("a time is not an xs:dateTime in UTC".into()))
}

/// The time `name` on `n`, if present.
pub fn time_attr(n: Node, name: &str) -> Result<Option<std::time::SystemTime>, Error> {
    n.attribute(name).map(instant).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bombs_are_refused_before_the_parser_runs() {
        let deep = format!("<r>{}", "<a>".repeat(100_000));
        let e = parse(&deep).expect_err("deep").to_string();
        assert!(e.contains("nest too deeply"), "{e}");
        let decls: String = (0..40).map(|k| format!(" xmlns:a{k}=\"u\"")).collect();
        let wide = format!("<r{decls}>{}</r>", "<b xmlns:c=\"u\"/>".repeat(1000));
        let e = parse(&wide).expect_err("namespaces").to_string();
        assert!(e.contains("too many namespaces"), "{e}");
        let attrs: String = (0..100).map(|k| format!(" a{k}=\"1\"")).collect();
        let e = parse(&format!("<r{attrs}/>"))
            .expect_err("attributes")
            .to_string();
        assert!(e.contains("too many attributes"), "{e}");
        let e = parse("<r><![CDATA[ <a><a>")
            .expect_err("unterminated")
            .to_string();
        assert!(e.contains("unterminated"), "{e}");
    }

    #[test]
    fn ordinary_documents_pass_the_prescan() {
        let xml = r#"<?xml version='1.0'?>
<p:R xmlns:p="urn:p" a='x>y' b="&lt;"><p:S xmlns:q="urn:q"/><![CDATA[<x>]]><p:T q = "1"></p:T></p:R>"#;
        let doc = parse(xml).expect("parses");
        assert_eq!(doc.root_element().tag_name().name(), "R");
        let depth_ok = format!("{}{}", "<a>".repeat(64), "</a>".repeat(64));
        parse(&depth_ok).expect("64 levels");
        let too_deep = format!("{}{}", "<a>".repeat(65), "</a>".repeat(65));
        assert!(parse(&too_deep).is_err());
    }
}
