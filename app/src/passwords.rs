//! Passwords: argon2id on a fixed set of worker threads, the password
//! rule, and the dummy hash that makes an unknown user cost as much.

use std::num::NonZeroUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{Output, ParamsString, PasswordHash as Phc, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use chrono::{DateTime, Utc};
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use twofold_domain::{PasswordCheck, PasswordHash, User};

use crate::error::AppError;

/// OWASP's argon2id minimum: m=19 MiB, t=2, p=1.
const PASSWORD_PARAMS: Params = match Params::new(19 * 1024, 2, 1, None) {
    Ok(params) => params,
    Err(_) => Params::DEFAULT,
};
const SALT_BYTES: usize = 16;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_BYTES: usize = 1024;

/// A password check queued longer than this is refused instead of run: its
/// client has waited long enough, and the workers are needed for newer ones.
pub const LONGEST_HASHING_WAIT: Duration = Duration::from_secs(2);

/// One hashing worker per core unless told otherwise.
pub fn default_hashing_workers() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Thirty-two waiting per worker unless told otherwise: at 20-40 ms a hash
/// the last in line waits under the 2 s bound (about a second at worst), and
/// a burst of sign-ins from a handful of busy clients is not refused.
pub fn default_hashing_queue(workers: NonZeroUsize) -> usize {
    32 * workers.get()
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every worker is busy and the line in front of them is full, or the
    /// check waited in it too long.
    #[error("password hashing is at capacity")]
    AtCapacity,
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::Error),
    #[error("PHC string: {0}")]
    Phc(#[from] argon2::password_hash::Error),
}

impl From<PasswordError> for AppError {
    fn from(error: PasswordError) -> Self {
        match error {
            PasswordError::AtCapacity => AppError::Unavailable { retry_after: 1 },
            other => AppError::Internal(other.to_string()),
        }
    }
}

/// The password rule (NIST SP 800-63B 5.1.1.2): 8 characters or more, any
/// characters, at most 1024 bytes (argon2 reads them all).
pub fn check_password(password: &str) -> Result<(), AppError> {
    if password.chars().count() < PASSWORD_MIN_CHARS || password.len() > PASSWORD_MAX_BYTES {
        return Err(AppError::InvalidRequest(format!(
            "passwords are {PASSWORD_MIN_CHARS} characters or more, at most {PASSWORD_MAX_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Argon2 on a fixed set of threads, each keeping its 19 MiB of blocks from
/// one hash to the next, behind a short line: memory stays at workers x
/// 19 MiB whatever the load (a fresh buffer per hash left glibc's per-thread
/// arenas holding hundreds of MiB), and a request the workers cannot serve
/// soon is refused at once instead of queueing for seconds.
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    places: Arc<Semaphore>,
    longest_wait: Duration,
}

/// A request's place among those the workers will serve soon; dropping it
/// lets the next request in.
pub struct HashingTurn {
    jobs: mpsc::Sender<Job>,
    longest_wait: Duration,
    _place: OwnedSemaphorePermit,
}

struct Job {
    /// Past this instant the job is dropped unrun, which answers its request
    /// `AtCapacity`; `None`: it waits its turn however long the line is.
    refuse_after: Option<Instant>,
    run: Box<dyn FnOnce(&mut Memory) + Send>,
}

impl PasswordHasher {
    /// `workers` threads, and `queue` more requests admitted than there are
    /// workers; a check queued for `longest_wait` is refused, not run.
    pub fn start(
        workers: NonZeroUsize,
        queue: usize,
        longest_wait: Duration,
    ) -> std::io::Result<Self> {
        let (jobs, queued) = mpsc::channel();
        let queued = Arc::new(Mutex::new(queued));
        for index in 0..workers.get() {
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || serve_jobs(&queued))?;
        }
        Ok(Self {
            jobs,
            places: Arc::new(Semaphore::new(workers.get() + queue)),
            longest_wait,
        })
    }

    /// A place in line, or `AtCapacity` at once.
    pub fn admit(&self) -> Result<HashingTurn, PasswordError> {
        let place = Arc::clone(&self.places)
            .try_acquire_owned()
            .map_err(|_| refused("line_full"))?;
        Ok(HashingTurn {
            jobs: self.jobs.clone(),
            longest_wait: self.longest_wait,
            _place: place,
        })
    }

    /// The PHC string of a new user's password. An administrator's request,
    /// not a password check: it takes no place in line and waits its turn,
    /// so creating many users at once is slow under load but never refused.
    pub async fn hash_for_new_user(&self, password: String) -> Result<PasswordHash, PasswordError> {
        submit(&self.jobs, None, move |memory| {
            new_hash(memory, password.as_bytes())
        })
        .await?
    }
}

fn refused(reason: &'static str) -> PasswordError {
    metrics::counter!("twofold_password_checks_refused_total", "reason" => reason).increment(1);
    PasswordError::AtCapacity
}

fn serve_jobs(queued: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = Memory::default();
    loop {
        let job = match queued.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            // The hasher is gone: the app stopped.
            Err(mpsc::RecvError) => return,
        };
        if job
            .refuse_after
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            refused("waited_too_long");
            continue;
        }
        (job.run)(&mut memory);
    }
}

impl HashingTurn {
    /// `password` checked against `user`'s current hash, for a command to
    /// carry (`PasswordCheck`: the domain honours it only while that hash is
    /// still the user's). Refused while the user's password is locked;
    /// `None` for a user never registered.
    pub async fn check_current(
        &self,
        user: &User,
        password: String,
        now: DateTime<Utc>,
    ) -> Result<Option<PasswordCheck>, AppError> {
        if let Some(until) = user.password_locked_until(now) {
            return Err(AppError::locked_until(Some(until), now));
        }
        let Some(stored) = user.profile().map(|p| p.password_hash.clone()) else {
            return Ok(None);
        };
        Ok(Some(PasswordCheck {
            matches: self.verify(Some(stored.clone()), password).await?,
            against: stored,
        }))
    }

    pub async fn hash(&self, password: String) -> Result<PasswordHash, PasswordError> {
        submit(&self.jobs, self.deadline(), move |memory| {
            new_hash(memory, password.as_bytes())
        })
        .await?
    }

    /// Checks `password` against `stored`, or against a dummy hash of the
    /// same cost when there is no such user (the answer is then false), so
    /// that "no such user" takes as long as "wrong password".
    pub async fn verify(
        &self,
        stored: Option<PasswordHash>,
        password: String,
    ) -> Result<bool, PasswordError> {
        submit(&self.jobs, self.deadline(), move |memory| {
            let phc = match &stored {
                Some(hash) => hash.as_str(),
                None => dummy_hash(),
            };
            phc_matches(memory, phc, password.as_bytes()) == Some(true) && stored.is_some()
        })
        .await
    }

    fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.longest_wait)
    }
}

/// Queues `task` for the next free worker and waits for its answer.
async fn submit<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    refuse_after: Option<Instant>,
    task: impl FnOnce(&mut Memory) -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        refuse_after,
        run: Box::new(move |memory| {
            // A client that went away needs no answer: the worker moves on.
            if !reply.is_closed() {
                drop(reply.send(task(memory)));
            }
        }),
    };
    jobs.send(job).map_err(|_| PasswordError::AtCapacity)?;
    answer.await.map_err(|_| PasswordError::AtCapacity)
}

/// A worker's argon2 blocks: allocated on its first hash, then kept.
#[derive(Default)]
struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    fn hash_into(
        &mut self,
        argon2: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> argon2::Result<()> {
        let kept = PASSWORD_PARAMS.block_count();
        if argon2.params().block_count() > kept {
            // Stored with more memory than the service uses now: allocated
            // for this check only, so the kept buffer stays at its size.
            return argon2.hash_password_into(password, salt, out);
        }
        if self.blocks.len() < kept {
            self.blocks = vec![Block::new(); kept];
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut self.blocks)
    }
}

fn new_hash(memory: &mut Memory, password: &[u8]) -> Result<PasswordHash, PasswordError> {
    let mut salt = [0u8; SALT_BYTES];
    OsRng.fill_bytes(&mut salt);
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, PASSWORD_PARAMS);
    memory.hash_into(&argon2, password, &salt, &mut output)?;
    Ok(PasswordHash::new(phc_string(&salt, &output)?))
}

/// The standard PHC string of an argon2id output under the service's parameters.
fn phc_string(salt: &[u8], output: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::encode_b64(salt)?;
    let phc = Phc {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&PASSWORD_PARAMS)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(output)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to `phc`, under the algorithm, version and
/// parameters written in it (older hashes may differ from today's); `None`
/// when `phc` is not an argon2 PHC string.
fn phc_matches(memory: &mut Memory, phc: &str, password: &[u8]) -> Option<bool> {
    let parsed = Phc::new(phc).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
        .ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let expected = parsed.hash?;
    let mut salt = [0u8; Salt::MAX_LENGTH];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
    let mut computed = [0u8; Output::MAX_LENGTH];
    let computed = computed.get_mut(..expected.len())?;
    let argon2 = Argon2::new(algorithm, version, params);
    memory.hash_into(&argon2, password, salt, computed).ok()?;
    Some(bool::from(computed.ct_eq(expected.as_bytes())))
}

/// A PHC string under the service's parameters that no password gives (its
/// output is random), checked for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut salt = [0u8; SALT_BYTES];
        let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut output);
        phc_string(&salt, &output).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    fn hasher(workers: usize, queue: usize) -> PasswordHasher {
        let workers = NonZeroUsize::new(workers).unwrap();
        PasswordHasher::start(workers, queue, LONGEST_HASHING_WAIT).unwrap()
    }

    async fn verify(
        hasher: &PasswordHasher,
        stored: Option<&PasswordHash>,
        password: &str,
    ) -> bool {
        let turn = hasher.admit().unwrap();
        turn.verify(stored.cloned(), password.to_string())
            .await
            .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        #[test]
        fn passwords_are_checked_without_panicking(password in proptest::prelude::any::<String>()) {
            let accepted = check_password(&password).is_ok();
            let chars = password.chars().count();
            proptest::prop_assert_eq!(
                accepted,
                chars >= PASSWORD_MIN_CHARS && password.len() <= PASSWORD_MAX_BYTES
            );
        }
    }

    #[tokio::test]
    async fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let hasher = hasher(1, 0);
        let stored = hasher
            .hash_for_new_user("correct horse".to_string())
            .await
            .unwrap();
        assert!(stored
            .as_str()
            .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(&hasher, Some(&stored), "correct horse").await);
        assert!(!verify(&hasher, Some(&stored), "correct horsf").await);
        assert!(!verify(&hasher, Some(&stored), "").await);
    }

    #[tokio::test]
    async fn each_hash_has_its_own_salt() {
        let hasher = hasher(1, 0);
        let first = hasher
            .hash_for_new_user("same password".to_string())
            .await
            .unwrap();
        let second = hasher
            .hash_for_new_user("same password".to_string())
            .await
            .unwrap();
        assert_ne!(first.as_str(), second.as_str());
    }

    #[tokio::test]
    async fn our_hashes_and_the_argon2_crates_verify_each_other() {
        let hasher = hasher(1, 0);
        let ours = hasher
            .hash_for_new_user("interoperable".to_string())
            .await
            .unwrap();
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, PASSWORD_PARAMS);
        let parsed = Phc::new(ours.as_str()).unwrap();
        assert!(reference.verify_password(b"interoperable", &parsed).is_ok());
        assert!(reference
            .verify_password(b"something else", &parsed)
            .is_err());

        let salt = SaltString::generate(&mut OsRng);
        let theirs = reference
            .hash_password(b"interoperable", &salt)
            .unwrap()
            .to_string();
        let theirs = PasswordHash::new(theirs);
        assert!(verify(&hasher, Some(&theirs), "interoperable").await);
        assert!(!verify(&hasher, Some(&theirs), "something else").await);
    }

    #[tokio::test]
    async fn stored_hashes_with_other_parameters_still_verify() {
        let hasher = hasher(1, 0);
        let smaller = Params::new(8 * 1024, 3, 1, Some(24)).unwrap();
        let larger = Params::new(32 * 1024, 1, 2, None).unwrap();
        for (algorithm, version, params) in [
            (Algorithm::Argon2id, Version::V0x13, smaller),
            (Algorithm::Argon2i, Version::V0x10, larger),
        ] {
            let salt = SaltString::generate(&mut OsRng);
            let stored = Argon2::new(algorithm, version, params)
                .hash_password(b"older password", &salt)
                .unwrap()
                .to_string();
            let stored = PasswordHash::new(stored);
            assert!(
                verify(&hasher, Some(&stored), "older password").await,
                "{algorithm}"
            );
            assert!(
                !verify(&hasher, Some(&stored), "newer password").await,
                "{algorithm}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_user_is_refused_whatever_the_password() {
        let hasher = hasher(1, 0);
        assert!(!verify(&hasher, None, "any password at all").await);
        assert!(!verify(&hasher, None, "").await);
    }

    #[tokio::test]
    async fn a_stored_value_that_is_no_phc_string_matches_nothing() {
        let hasher = hasher(1, 0);
        let garbage = PasswordHash::new("not a hash".into());
        assert!(!verify(&hasher, Some(&garbage), "not a hash").await);
    }

    /// The unknown-user check costs what a real one does because it runs
    /// the same code on a hash of the same algorithm, parameters and sizes.
    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = Phc::new(dummy_hash()).unwrap();
        let mut memory = Memory::default();
        let real = new_hash(&mut memory, b"a real password").unwrap();
        let real = Phc::new(real.as_str()).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(
            dummy.salt.unwrap().as_str().len(),
            real.salt.unwrap().as_str().len()
        );
        assert_eq!(dummy.hash.unwrap().len(), real.hash.unwrap().len());
    }

    #[tokio::test]
    async fn beyond_the_workers_and_the_queue_requests_are_refused_at_once() {
        let hasher = hasher(1, 1);
        let running = hasher.admit().unwrap();
        let waiting = hasher.admit().unwrap();
        assert!(matches!(hasher.admit(), Err(PasswordError::AtCapacity)));
        drop(running);
        let next = hasher.admit().unwrap();
        assert!(next.verify(None, "x".repeat(8)).await.is_ok());
        drop(waiting);
    }

    #[tokio::test]
    async fn a_new_users_password_waits_its_turn_even_when_the_line_is_full() {
        let hasher = hasher(1, 0);
        let _taken = hasher.admit().unwrap();
        assert!(matches!(hasher.admit(), Err(PasswordError::AtCapacity)));
        let stored = hasher
            .hash_for_new_user("patient password".into())
            .await
            .unwrap();
        assert!(stored.as_str().starts_with("$argon2id$"));
    }

    #[tokio::test]
    async fn a_check_that_waited_too_long_is_refused_not_run() {
        let hasher = PasswordHasher::start(NonZeroUsize::MIN, 1, Duration::ZERO).unwrap();
        let turn = hasher.admit().unwrap();
        let answer = turn.verify(None, "patient password".into()).await;
        assert!(matches!(answer, Err(PasswordError::AtCapacity)));
    }
}
