//! Command-line pieces built from the backend registry: the `-B` value parser
//! and the backend-specific `berth pool add` settings. Nothing here names a
//! backend; a new backend shows up by being registered.

use std::collections::BTreeMap;
use std::ffi::OsStr;

use berth_backends::REGISTRY;
use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

/// Parses `-B NAME` (or an alias) to the backend's registry name.
#[derive(Debug, Clone, Copy)]
pub struct BackendParser;

impl TypedValueParser for BackendParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_string_lossy();
        match berth_backends::lookup(&text) {
            Ok(reg) => Ok(reg.name.to_owned()),
            Err(_) => {
                let mut err = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
                use clap::error::{ContextKind, ContextValue};
                if let Some(arg) = arg {
                    err.insert(
                        ContextKind::InvalidArg,
                        ContextValue::String(arg.to_string()),
                    );
                }
                err.insert(
                    ContextKind::InvalidValue,
                    ContextValue::String(text.into_owned()),
                );
                err.insert(
                    ContextKind::ValidValue,
                    ContextValue::Strings(
                        berth_backends::names()
                            .iter()
                            .map(|n| n.to_string())
                            .collect(),
                    ),
                );
                Err(err)
            }
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(REGISTRY.iter().map(|r| {
            PossibleValue::new(r.name)
                .help(r.summary)
                .aliases(r.aliases.iter().copied())
        })))
    }
}

/// The backend-specific settings of `berth pool add`, one `--KEY VALUE` per
/// registered pool option (a key several backends share is offered once).
#[derive(Debug, Clone, Default)]
pub struct PoolOptionArgs {
    pub options: BTreeMap<String, String>,
}

/// Every registered option key, with the backends that take it.
fn option_keys() -> BTreeMap<&'static str, (Vec<&'static str>, &'static berth_bdev::PoolOption)> {
    let mut keys: BTreeMap<&str, (Vec<&str>, &berth_bdev::PoolOption)> = BTreeMap::new();
    for reg in REGISTRY {
        for opt in reg.pool_options {
            keys.entry(opt.key)
                .or_insert_with(|| (Vec::new(), opt))
                .0
                .push(reg.name);
        }
    }
    keys
}

impl Args for PoolOptionArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for (key, (backends, opt)) in option_keys() {
            let mut help = format!("{} ({}", opt.help, backends.join(", "));
            if opt.required {
                help.push_str("; required");
            }
            help.push(')');
            cmd = cmd.arg(
                Arg::new(key)
                    .long(key)
                    .value_name(opt.value_name)
                    .help(help),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for PoolOptionArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut options = BTreeMap::new();
        for key in option_keys().into_keys() {
            if let Some(v) = m.get_one::<String>(key) {
                options.insert(key.to_owned(), v.clone());
            }
        }
        Ok(PoolOptionArgs { options })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}
