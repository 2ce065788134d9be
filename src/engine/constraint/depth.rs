//! How deeply a constraint nests, measured before it reaches llguidance. llguidance compiles
//! schemas and grammars recursively (and derives its lexer's regexes recursively while it masks),
//! so a chain of `$ref`s or of rules a few kilobytes long can need more stack than a thread has:
//! measured on llguidance 1.9.1 with a 2 MiB stack, a `$ref` chain of 800, a rule chain of 800 and
//! a terminal chain of 1,600 overflowed, while 400 / 400 / 800 compiled. The walk below bounds that
//! depth ([`MAX_DEPTH`]) and stops as soon as it is passed, so it never recurses deeper itself.
//! Chains are counted link by link; for a schema every JSON level counts too.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// The deepest constraint accepted: a chain of this many rules, `$ref`s or nested levels. The
/// threads that compile and mask give it 64 MiB of stack (see `STACK_BYTES`), where chains of
/// 20,000 were measured to compile (and 64 KiB of text cannot spell more than ~10,000).
pub const MAX_DEPTH: usize = 512;

/// Passed [`MAX_DEPTH`].
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep;

type Depth = std::result::Result<usize, TooDeep>;

/// The nesting depth of a JSON Schema, following its `$ref`s (a cycle is recursion, which
/// llguidance compiles lazily: it adds nothing).
pub fn schema_depth(schema: &Value) -> Depth {
    SchemaWalk::new(schema).depth(schema, 0)
}

struct SchemaWalk<'a> {
    root: &'a Value,
    /// Subschemas a non-pointer reference (`$id`, `$anchor`, a URI) may name: all of them count.
    named: Vec<&'a Value>,
    memo: HashMap<*const Value, usize>,
    active: HashSet<*const Value>,
}

impl<'a> SchemaWalk<'a> {
    fn new(root: &'a Value) -> Self {
        let mut named = Vec::new();
        collect_named(root, &mut named, 0);
        SchemaWalk { root, named, memo: HashMap::new(), active: HashSet::new() }
    }

    fn depth(&mut self, value: &'a Value, level: usize) -> Depth {
        if level > MAX_DEPTH {
            return Err(TooDeep);
        }
        let mut deepest = 0;
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let d = match (key.as_str(), child) {
                        ("$ref" | "$dynamicRef" | "$recursiveRef", Value::String(target)) => {
                            self.reference(target, level)?
                        }
                        _ => self.depth(child, level + 1)?,
                    };
                    deepest = deepest.max(d);
                }
            }
            Value::Array(items) => {
                for item in items {
                    deepest = deepest.max(self.depth(item, level + 1)?);
                }
            }
            _ => return Ok(0),
        }
        Ok(deepest + 1)
    }

    /// The depth a reference at `level` adds to the object holding it: its target's, or for a
    /// name that is not a JSON pointer, the deepest of the subschemas it could name.
    fn reference(&mut self, target: &str, level: usize) -> Depth {
        let pointer = target.strip_prefix('#').filter(|p| p.is_empty() || p.starts_with('/'));
        let targets: Vec<&'a Value> = match pointer {
            Some(p) => self.root.pointer(&percent_decode(p)).into_iter().collect(),
            None => self.named.clone(),
        };
        let mut deepest = 0;
        for t in targets {
            let key = t as *const Value;
            let d = match self.memo.get(&key) {
                Some(&d) => d,
                None if !self.active.insert(key) => 0,
                None => {
                    let d = self.depth(t, level);
                    self.active.remove(&key);
                    let d = d?;
                    self.memo.insert(key, d);
                    d
                }
            };
            if level + d > MAX_DEPTH {
                return Err(TooDeep);
            }
            deepest = deepest.max(d);
        }
        Ok(deepest)
    }
}

/// Every subschema with an `$id` or an anchor (what a reference that is not a pointer can name).
fn collect_named<'a>(value: &'a Value, out: &mut Vec<&'a Value>, level: usize) {
    if level > MAX_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            if ["$id", "id", "$anchor", "$dynamicAnchor", "$recursiveAnchor"].iter().any(|k| map.contains_key(*k)) {
                out.push(value);
            }
            map.values().for_each(|v| collect_named(v, out, level + 1));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_named(v, out, level + 1)),
        _ => {}
    }
}

/// A URI fragment's percent-escapes decoded (`#/%24defs/a` names `#/$defs/a`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The nesting depth of a Lark grammar (llguidance's dialect): the longest chain of rules and
/// terminals naming each other (a cycle is recursion: it adds nothing), each adding its own
/// bracket nesting and the depth of any `%json` schema it holds.
pub fn grammar_depth(lark: &str) -> Depth {
    let definitions = lark_definitions(lark)?;
    let mut walk = GrammarWalk { definitions: &definitions, memo: HashMap::new(), active: HashSet::new() };
    let mut deepest = 0;
    for name in definitions.keys() {
        deepest = deepest.max(walk.depth(name, 0)?);
    }
    Ok(deepest)
}

/// One rule or terminal: its own nesting and the names its body uses.
#[derive(Default)]
struct Definition {
    own: usize,
    uses: Vec<String>,
}

struct GrammarWalk<'a> {
    definitions: &'a HashMap<String, Definition>,
    memo: HashMap<&'a str, usize>,
    active: HashSet<&'a str>,
}

impl<'a> GrammarWalk<'a> {
    fn depth(&mut self, name: &'a str, level: usize) -> Depth {
        if level > MAX_DEPTH {
            return Err(TooDeep);
        }
        if let Some(&d) = self.memo.get(name) {
            return if level + d > MAX_DEPTH { Err(TooDeep) } else { Ok(d) };
        }
        let Some(definition) = self.definitions.get(name) else { return Ok(0) };
        if !self.active.insert(name) {
            return Ok(0);
        }
        let mut deepest = 0;
        for used in &definition.uses {
            let d = self.depth(used, level + 1);
            if d.is_err() {
                self.active.remove(name);
            }
            deepest = deepest.max(d?);
        }
        self.active.remove(name);
        let d = deepest + definition.own + 1;
        self.memo.insert(name, d);
        if level + d > MAX_DEPTH {
            return Err(TooDeep);
        }
        Ok(d)
    }
}

/// The grammar's definitions by name: a line that starts with a name (after `?` or `!`, before
/// an optional `.priority`) and a colon begins one; the lines up to the next belong to it.
/// Strings, regexes and comments are skipped; `%json {...}` blocks are measured as schemas.
fn lark_definitions(lark: &str) -> std::result::Result<HashMap<String, Definition>, TooDeep> {
    let mut definitions: HashMap<String, Definition> = HashMap::new();
    let mut current: Option<String> = None;
    let mut nesting = 0usize;
    let chars: Vec<char> = lark.chars().collect();
    let mut i = 0;
    let mut line_start = true;
    while i < chars.len() {
        let c = chars[i];
        if line_start {
            line_start = false;
            if let Some((name, after)) = definition_head(&chars, i) {
                definitions.entry(name.clone()).or_default();
                current = Some(name);
                nesting = 0;
                i = after;
                continue;
            }
        }
        let here = current.as_ref().and_then(|n| definitions.get_mut(n));
        match c {
            '\n' => {
                line_start = true;
                i += 1;
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '/' => i = skip_quoted(&chars, i, c),
            '%' if word_at(&chars, i + 1) == "json" => {
                let start = (i + 5..chars.len()).find(|&j| !chars[j].is_whitespace()).unwrap_or(chars.len());
                let end = if chars.get(start) == Some(&'{') { balanced_json_end(&chars, start) } else { start };
                let text: String = chars[start..end].iter().collect();
                if let (Some(d), Ok(schema)) = (here, serde_json::from_str::<Value>(&text)) {
                    d.own = d.own.max(nesting + schema_depth(&schema)?);
                }
                i = end.max(i + 1);
            }
            '(' | '[' => {
                nesting += 1;
                if let Some(d) = here {
                    d.own = d.own.max(nesting);
                }
                if nesting > MAX_DEPTH {
                    return Err(TooDeep);
                }
                i += 1;
            }
            ')' | ']' => {
                nesting = nesting.saturating_sub(1);
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let word = word_at(&chars, i);
                i += word.chars().count();
                if let Some(d) = here {
                    d.uses.push(word);
                }
            }
            _ => i += 1,
        }
    }
    Ok(definitions)
}

/// The name of a definition starting at `i` (`name:`, `?name:`, `!name.2:`) and where its body
/// begins.
fn definition_head(chars: &[char], mut i: usize) -> Option<(String, usize)> {
    while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
        i += 1;
    }
    if matches!(chars.get(i), Some('?' | '!')) {
        i += 1;
    }
    let name = word_at(chars, i);
    if name.is_empty() || !name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
        return None;
    }
    i += name.chars().count();
    if chars.get(i) == Some(&'.') {
        i += 1;
        while matches!(chars.get(i), Some(c) if c.is_ascii_digit() || *c == '-') {
            i += 1;
        }
    }
    while matches!(chars.get(i), Some(' ' | '\t')) {
        i += 1;
    }
    (chars.get(i) == Some(&':')).then(|| (name, i + 1))
}

/// The identifier starting at `i` (empty if none).
fn word_at(chars: &[char], i: usize) -> String {
    chars[i.min(chars.len())..].iter().take_while(|c| c.is_alphanumeric() || **c == '_').collect()
}

/// Past a string or regex literal opened by `quote` at `i` (backslash escapes; to the end of the
/// line at most).
fn skip_quoted(chars: &[char], i: usize, quote: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote && chars[j] != '\n' {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    (j + 1).min(chars.len())
}

/// The end (exclusive) of the JSON object opening at `start`.
fn balanced_json_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut j, mut in_string) = (0usize, start, false);
    while j < chars.len() {
        match (chars[j], in_string) {
            ('\\', true) => j += 1,
            ('"', _) => in_string = !in_string,
            ('{' | '[', false) => depth += 1,
            ('}' | ']', false) => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    chars.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ref_chain(n: usize, prefix: &str) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            defs.insert(format!("a{i}"), json!({"$ref": format!("{prefix}a{}", i + 1)}));
        }
        defs.insert(format!("a{n}"), json!({"type": "integer"}));
        json!({"$defs": defs, "$ref": format!("{prefix}a0")})
    }

    #[test]
    fn schemas_count_their_ref_chains_and_nesting_and_recursion_adds_nothing() {
        let d = schema_depth(&ref_chain(400, "#/$defs/")).unwrap();
        assert!((400..=420).contains(&d), "{d}");
        assert_eq!(schema_depth(&ref_chain(800, "#/$defs/")), Err(TooDeep));
        assert_eq!(schema_depth(&ref_chain(800, "#/%24defs/")), Err(TooDeep), "percent-escaped pointers");
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"});
        assert!(schema_depth(&tree).unwrap() < 12);
        // References by $id are followed to every named subschema (conservatively).
        let mut defs = serde_json::Map::new();
        for i in 0..800 {
            defs.insert(format!("a{i}"), json!({"$id": format!("urn:a{i}"), "$ref": format!("urn:a{}", i + 1)}));
        }
        assert_eq!(schema_depth(&json!({"$defs": defs})), Err(TooDeep));
        let mut nested = json!({"type": "integer"});
        for _ in 0..600 {
            nested = json!({"type": "array", "items": nested});
        }
        assert_eq!(schema_depth(&nested), Err(TooDeep));
    }

    #[test]
    fn grammars_count_their_rule_and_terminal_chains() {
        let chain = |n: usize, upper: bool| {
            let name = |i: usize| if upper { format!("T{i}") } else { format!("r{i}") };
            let mut g = format!("start: {}\n", name(0));
            for i in 0..n {
                g.push_str(&format!("{}: {} \"x\" // r99999\n", name(i), name(i + 1)));
            }
            g + &format!("{}: \"x\" /r[0-9]+/\n", name(n))
        };
        assert!(grammar_depth(&chain(500, false)).unwrap() >= 500);
        assert_eq!(grammar_depth(&chain(700, false)), Err(TooDeep));
        assert_eq!(grammar_depth(&chain(2000, true)), Err(TooDeep));
        let recursive =
            "start: list\nlist: \"[\" (item (\",\" item)*)? \"]\"\nitem: NUMBER | list\n%import common.NUMBER\n";
        assert!(grammar_depth(recursive).unwrap() < 10);
        let alternatives = "?start: a\n  | b\na.2: \"a\"\nb: \"b\"";
        assert_eq!(grammar_depth(alternatives).unwrap(), 2);
        let deep_json = format!("start: %json {}\n", ref_chain(800, "#/$defs/"));
        assert_eq!(grammar_depth(&deep_json), Err(TooDeep), "a %json schema counts");
    }
}
