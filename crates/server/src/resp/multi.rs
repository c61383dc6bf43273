//! `MULTI`/`EXEC`/`DISCARD`: commands queued on a connection and run together on `EXEC`.
//!
//! What a client gets, and what it does not: after `MULTI` every command is checked (known, the
//! right number of arguments) and queued (`+QUEUED`), or refused, which dooms the transaction:
//! its `EXEC` answers `EXECABORT` and runs nothing. `EXEC` runs the queued commands in order,
//! as a pipeline would, and answers an array of their replies; a command that fails there (a
//! quorum not met, say) does not stop the others, as in Redis. It is not atomic and not
//! isolated: each command is its own quorum operation, other clients' writes may land between
//! them, and some may be applied while another fails. `DISCARD` drops the queue. `WATCH` is
//! refused (dynamokv has no optimistic lock across keys; a `DKV.PUT` with a context is the
//! conditional write).

use super::codec::{error, simple};
use super::commands::name;
use super::local::COMMANDS;

/// A transaction being queued on a connection.
#[derive(Debug, Default)]
pub struct Multi {
    queued: Vec<Vec<Vec<u8>>>,
    /// A command was refused while queuing: `EXEC` runs nothing.
    doomed: bool,
}

/// What the connection does with a command, given its transaction state.
pub enum Step {
    /// Run it as usual (no transaction, and not a transaction command).
    Run(Vec<Vec<u8>>),
    /// Answer this, run nothing.
    Reply(Vec<u8>),
    /// Run these queued commands and answer an array of their replies.
    Exec(Vec<Vec<Vec<u8>>>),
}

/// Whether `args` is a command that starts, ends or is about a transaction.
fn is_transaction_command(args: &[Vec<u8>]) -> bool {
    matches!(
        name(args).as_slice(),
        b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH"
    )
}

/// Whether this endpoint knows `args`' command and its number of arguments fits.
fn well_formed(args: &[Vec<u8>]) -> Result<(), String> {
    let wanted = String::from_utf8_lossy(&name(args)).to_lowercase();
    let Some(spec) = COMMANDS.iter().find(|c| c.0 == wanted) else {
        return Err(format!("ERR unknown command '{wanted}'"));
    };
    let n = args.len() as i64;
    let fits = if spec.1 >= 0 {
        n == spec.1
    } else {
        n >= -spec.1
    };
    if !fits {
        return Err(format!(
            "ERR wrong number of arguments for '{wanted}' command"
        ));
    }
    Ok(())
}

fn reply(f: impl FnOnce(&mut Vec<u8>)) -> Step {
    let mut out = Vec::new();
    f(&mut out);
    Step::Reply(out)
}

/// The next step for `args` on a connection whose open transaction is `open`.
pub fn step(open: &mut Option<Multi>, args: Vec<Vec<u8>>) -> Step {
    let command = name(&args);
    let Some(multi) = open.as_mut() else {
        return match command.as_slice() {
            b"MULTI" if args.len() == 1 => {
                *open = Some(Multi::default());
                reply(|o| simple(o, "OK"))
            }
            b"EXEC" => reply(|o| error(o, "ERR EXEC without MULTI")),
            b"DISCARD" => reply(|o| error(o, "ERR DISCARD without MULTI")),
            b"WATCH" => reply(|o| {
                error(
                    o,
                    "ERR WATCH is not supported: dynamokv has no optimistic lock across keys; for a conditional write, DKV.PUT with the context DKV.GET returned",
                )
            }),
            b"UNWATCH" => reply(|o| simple(o, "OK")),
            _ if is_transaction_command(&args) => reply(|o| {
                let n = String::from_utf8_lossy(&command).to_lowercase();
                error(
                    o,
                    &format!("ERR wrong number of arguments for '{n}' command"),
                )
            }),
            _ => Step::Run(args),
        };
    };
    match command.as_slice() {
        b"EXEC" => {
            let multi = open.take().unwrap_or_default();
            if multi.doomed {
                reply(|o| {
                    error(
                        o,
                        "EXECABORT Transaction discarded because of previous errors.",
                    )
                })
            } else {
                Step::Exec(multi.queued)
            }
        }
        b"DISCARD" => {
            *open = None;
            reply(|o| simple(o, "OK"))
        }
        b"MULTI" => {
            multi.doomed = true;
            reply(|o| error(o, "ERR MULTI calls can not be nested"))
        }
        b"WATCH" => {
            multi.doomed = true;
            reply(|o| error(o, "ERR WATCH inside MULTI is not allowed"))
        }
        _ => match well_formed(&args) {
            Ok(()) => {
                multi.queued.push(args);
                reply(|o| simple(o, "QUEUED"))
            }
            Err(why) => {
                multi.doomed = true;
                reply(|o| error(o, &why))
            }
        },
    }
}

/// Whether a command of `args` needs [`step`] rather than running at once: a transaction
/// command, or any command while a transaction is `open`.
pub fn needs_step(open: &Option<Multi>, args: &[Vec<u8>]) -> bool {
    open.is_some() || is_transaction_command(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn replied(s: Step) -> String {
        match s {
            Step::Reply(r) => String::from_utf8(r).unwrap(),
            Step::Run(_) => "run".into(),
            Step::Exec(q) => format!("exec {}", q.len()),
        }
    }

    #[test]
    fn commands_queue_between_multi_and_exec_and_a_refused_one_dooms_the_exec() {
        let mut c: Option<Multi> = None;
        assert_eq!(replied(step(&mut c, words("GET k"))), "run");
        assert_eq!(
            replied(step(&mut c, words("EXEC"))),
            "-ERR EXEC without MULTI\r\n"
        );
        assert_eq!(replied(step(&mut c, words("MULTI"))), "+OK\r\n");
        assert_eq!(replied(step(&mut c, words("SET k v"))), "+QUEUED\r\n");
        assert_eq!(replied(step(&mut c, words("GET k"))), "+QUEUED\r\n");
        assert_eq!(replied(step(&mut c, words("EXEC"))), "exec 2");
        assert!(c.is_none());

        assert_eq!(replied(step(&mut c, words("MULTI"))), "+OK\r\n");
        assert_eq!(replied(step(&mut c, words("SET k v"))), "+QUEUED\r\n");
        assert!(replied(step(&mut c, words("SET k"))).starts_with("-ERR wrong number"));
        assert!(replied(step(&mut c, words("NOPE x"))).starts_with("-ERR unknown command"));
        assert!(replied(step(&mut c, words("EXEC"))).starts_with("-EXECABORT"));
        assert!(c.is_none(), "nothing queued is left to run");

        assert_eq!(replied(step(&mut c, words("MULTI"))), "+OK\r\n");
        assert_eq!(replied(step(&mut c, words("SET k v"))), "+QUEUED\r\n");
        assert_eq!(replied(step(&mut c, words("DISCARD"))), "+OK\r\n");
        assert_eq!(replied(step(&mut c, words("SET k v"))), "run");
        assert!(replied(step(&mut c, words("WATCH k"))).contains("not supported"));
    }
}
