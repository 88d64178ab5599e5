//! `${VAR}` substitution from the environment.
//!
//! Substitution happens on parsed string values, not on the raw text, so comments and keys are
//! never touched. `$${` stands for a literal `${`.

use serde_yaml::Value;

/// A `${VAR}` whose variable is not set.
#[derive(Debug)]
pub(crate) struct MissingVar {
    pub name: String,
}

/// Replace every `${VAR}` in the string values of `value`, using `lookup`.
pub(crate) fn substitute(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), MissingVar> {
    match value {
        Value::String(s) if s.contains("${") => {
            *s = substitute_str(s, lookup)?;
            Ok(())
        }
        Value::Sequence(items) => items.iter_mut().try_for_each(|v| substitute(v, lookup)),
        Value::Mapping(map) => map.iter_mut().try_for_each(|(_, v)| substitute(v, lookup)),
        Value::Tagged(tagged) => substitute(&mut tagged.value, lookup),
        _ => Ok(()),
    }
}

fn substitute_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            // `$${` is an escaped, literal `${`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(MissingVar {
                    name: name.to_string(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn replaces_and_escapes() {
        assert_eq!(
            substitute_str("Bearer ${TOKEN}", &env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(substitute_str("$${TOKEN}", &env).unwrap(), "${TOKEN}");
        assert_eq!(substitute_str("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn missing_variable_is_named() {
        let err = substitute_str("${NOPE}", &env).unwrap_err();
        assert_eq!(err.name, "NOPE");
    }
}
