//! Typed task arguments from Celery's positional args and kwargs.
//!
//! A task's arguments arrive as `args` (an array) and `kwargs` (an object),
//! as in Python: `add(2, y=3)` is `args = [2]`, `kwargs = {"y": 3}`.
//! [`FromArgs`] turns them into Rust values with a clear [`ArgsError`] when
//! one is missing, extra, or of the wrong type. The `#[celeriac::task]`
//! attribute implements it for each task; tuples implement it for
//! positional-only use.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// Why a task's arguments could not be read. The text names the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    /// A required argument was given neither by position nor by name.
    #[error("missing argument `{name}`")]
    Missing {
        /// The argument's name.
        name: String,
    },
    /// The same argument was given by position and by name.
    #[error("argument `{name}` given twice (by position and by name)")]
    Duplicate {
        /// The argument's name.
        name: String,
    },
    /// More positional arguments than the task takes.
    #[error("takes {expected} positional arguments but {got} were given")]
    TooMany {
        /// How many the task takes.
        expected: usize,
        /// How many were given.
        got: usize,
    },
    /// A keyword argument the task does not take.
    #[error("unexpected keyword argument `{name}`")]
    Unexpected {
        /// The keyword.
        name: String,
    },
    /// An argument of the wrong type.
    #[error("argument `{name}` has the wrong type: {reason}")]
    WrongType {
        /// The argument's name or position.
        name: String,
        /// What serde said.
        reason: String,
    },
    /// The return value could not be encoded, or the args not built.
    #[error("cannot encode value: {reason}")]
    Encode {
        /// What serde said.
        reason: String,
    },
}

/// Builds a task's typed arguments from `args` and `kwargs`.
///
/// ```
/// use celeriac_core::FromArgs;
/// use serde_json::{json, Map};
///
/// let (x, y): (i64, i64) = FromArgs::from_args(vec![json!(2), json!(3)], Map::new()).unwrap();
/// assert_eq!(x + y, 5);
/// let err = <(i64, i64)>::from_args(vec![json!(2), json!("x")], Map::new()).unwrap_err();
/// assert_eq!(err.to_string(), "argument `1` has the wrong type: invalid type: string \"x\", expected i64");
/// ```
pub trait FromArgs: Sized {
    /// Reads the arguments.
    fn from_args(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self, ArgsError>;
}

/// Turns typed arguments into `args` and `kwargs` for a message.
pub trait IntoArgs {
    /// Writes the arguments.
    fn into_args(self) -> Result<(Vec<Value>, Map<String, Value>), ArgsError>;
}

/// Arguments taken as they came: any `args` and `kwargs`.
///
/// ```
/// use celeriac_core::{args::RawArgs, FromArgs};
/// use serde_json::{json, Map};
/// let raw = RawArgs::from_args(vec![json!(1)], Map::new()).unwrap();
/// assert_eq!(raw.args, vec![json!(1)]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawArgs {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl FromArgs for RawArgs {
    fn from_args(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self, ArgsError> {
        Ok(RawArgs { args, kwargs })
    }
}

impl IntoArgs for RawArgs {
    fn into_args(self) -> Result<(Vec<Value>, Map<String, Value>), ArgsError> {
        Ok((self.args, self.kwargs))
    }
}

/// Reads named arguments one by one; the `#[task]` attribute generates calls
/// to it. Positional values are taken first, then the keyword of that name.
#[derive(Debug)]
pub struct ArgReader {
    args: std::vec::IntoIter<Value>,
    given: usize,
    kwargs: Map<String, Value>,
    taken: usize,
}

impl ArgReader {
    /// Starts reading.
    pub fn new(args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        ArgReader {
            given: args.len(),
            args: args.into_iter(),
            kwargs,
            taken: 0,
        }
    }

    /// Reads the next argument, by position or by `name`. A missing argument
    /// reads as JSON `null`, so `Option` parameters may be left out.
    pub fn next<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, ArgsError> {
        self.taken += 1;
        let value = match self.args.next() {
            Some(v) => {
                if self.kwargs.contains_key(name) {
                    return Err(ArgsError::Duplicate {
                        name: name.to_owned(),
                    });
                }
                v
            }
            None => match self.kwargs.remove(name) {
                Some(v) => v,
                None => {
                    return serde_json::from_value(Value::Null).map_err(|_| ArgsError::Missing {
                        name: name.to_owned(),
                    })
                }
            },
        };
        serde_json::from_value(value).map_err(|e| ArgsError::WrongType {
            name: name.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Checks that nothing is left over.
    pub fn finish(mut self) -> Result<(), ArgsError> {
        if self.given > self.taken {
            return Err(ArgsError::TooMany {
                expected: self.taken,
                got: self.given,
            });
        }
        if let Some((name, _)) = std::mem::take(&mut self.kwargs).into_iter().next() {
            return Err(ArgsError::Unexpected { name });
        }
        Ok(())
    }
}

/// Encodes one argument; the `#[task]` attribute generates calls to it.
pub fn encode_arg<T: Serialize>(name: &str, value: &T) -> Result<Value, ArgsError> {
    serde_json::to_value(value).map_err(|e| ArgsError::Encode {
        reason: format!("argument `{name}`: {e}"),
    })
}

macro_rules! tuple_args {
    ($($n:tt $t:ident),*) => {
        impl<$($t: DeserializeOwned),*> FromArgs for ($($t,)*) {
            fn from_args(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self, ArgsError> {
                #[allow(unused_mut)]
                let mut r = ArgReader::new(args, kwargs);
                let out = ($(r.next::<$t>(stringify!($n))?,)*);
                r.finish()?;
                Ok(out)
            }
        }
        impl<$($t: Serialize),*> IntoArgs for ($($t,)*) {
            fn into_args(self) -> Result<(Vec<Value>, Map<String, Value>), ArgsError> {
                let v = vec![$(encode_arg(stringify!($n), &self.$n)?),*];
                Ok((v, Map::new()))
            }
        }
    };
}

tuple_args!();
tuple_args!(0 A);
tuple_args!(0 A, 1 B);
tuple_args!(0 A, 1 B, 2 C);
tuple_args!(0 A, 1 B, 2 C, 3 D);
tuple_args!(0 A, 1 B, 2 C, 3 D, 4 E);
tuple_args!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F);
tuple_args!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G);
tuple_args!(0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn reads_positional_then_keyword() {
        let mut r = ArgReader::new(vec![json!(2)], kw(json!({"y": 3})));
        assert_eq!(r.next::<i64>("x").unwrap(), 2);
        assert_eq!(r.next::<i64>("y").unwrap(), 3);
        r.finish().unwrap();
    }

    #[test]
    fn reports_each_kind_of_mistake() {
        let mut r = ArgReader::new(vec![], Map::new());
        assert_eq!(
            r.next::<i64>("x").unwrap_err(),
            ArgsError::Missing { name: "x".into() }
        );

        let mut r = ArgReader::new(vec![json!(1)], kw(json!({"x": 2})));
        assert!(matches!(
            r.next::<i64>("x"),
            Err(ArgsError::Duplicate { .. })
        ));

        let mut r = ArgReader::new(vec![json!(1), json!(2)], Map::new());
        r.next::<i64>("x").unwrap();
        assert_eq!(
            r.finish().unwrap_err(),
            ArgsError::TooMany {
                expected: 1,
                got: 2
            }
        );

        let r = ArgReader::new(vec![], kw(json!({"z": 1})));
        assert_eq!(
            r.finish().unwrap_err(),
            ArgsError::Unexpected { name: "z".into() }
        );
    }

    #[test]
    fn option_may_be_left_out() {
        let mut r = ArgReader::new(vec![], Map::new());
        assert_eq!(r.next::<Option<i64>>("x").unwrap(), None);
    }

    #[test]
    fn tuples_round_trip() {
        let (a, k) = (1i64, "two".to_string()).into_args().unwrap();
        assert!(k.is_empty());
        let back: (i64, String) = FromArgs::from_args(a, k).unwrap();
        assert_eq!(back, (1, "two".to_string()));
    }
}
