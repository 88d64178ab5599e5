//! Finding tools by words: a query's words against each tool's name, server and description.
//!
//! A word in a tool's name weighs more than one in its description, a prefix counts (so
//! `issue` finds `issues`), and a query that is a tool's whole name ranks it first. Simple and
//! predictable: the model sees why a tool came up.

use std::collections::HashSet;

use super::stubs::ToolStub;

/// Lower-case words of `text`, split at non-alphanumerics and camelCase boundaries.
pub fn words(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in text.chars() {
        if !c.is_alphanumeric() {
            flush(&mut word, &mut out);
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower {
            flush(&mut word, &mut out);
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    flush(&mut word, &mut out);
    out
}

fn flush(word: &mut String, out: &mut HashSet<String>) {
    if word.len() > 1 {
        out.insert(std::mem::take(word));
    }
    word.clear();
}

/// How well `tool` matches the query's words; 0 for no match.
pub fn score(tool: &ToolStub, exposed: &str, query: &str, query_words: &HashSet<String>) -> u32 {
    let name_words = words(&format!("{} {}", tool.function, tool.namespace));
    let mut score = 0;
    if exposed.eq_ignore_ascii_case(query.trim())
        || format!("{}.{}", tool.namespace, tool.function).eq_ignore_ascii_case(query.trim())
    {
        score += 100;
    }
    for q in query_words {
        if name_words.contains(q) {
            score += 6;
        } else if name_words.iter().any(|w| w.starts_with(q.as_str())) {
            score += 4;
        }
        if tool.words.contains(q) {
            score += 2;
        } else if q.len() >= 4 && tool.words.iter().any(|w| w.starts_with(q.as_str())) {
            score += 1;
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_case_and_separators() {
        let w = words("getFileContents of github__list_issues");
        for expected in ["get", "file", "contents", "of", "github", "list", "issues"] {
            assert!(w.contains(expected), "{expected} in {w:?}");
        }
    }
}
