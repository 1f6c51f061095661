/* The stepping loop of envs.mujoco_batch.MujocoBatchEnv, in C: step a batch of persistent
 * MjData on a pool of threads and copy their state into batch arrays, without the GIL.
 *
 * Built by `pip install` as the extension module envs._mjbatch (setup.py); the module itself
 * is empty: envs/native.py imports it to find the file, then loads it with ctypes, which
 * releases the GIL for the whole call.
 * It does not include MuJoCo's headers nor link libmujoco: mj_step, mj_rnePostConstraint and
 * MuJoCo's thread-local error hook come in as function pointers taken from the libmujoco the
 * `mujoco` package loaded, and every field it reads or writes comes in as a per-env address
 * (numpy's view of that field in the MjData: its arena never moves). So it calls exactly what
 * `mujoco.mj_step(model, data, nstep)` calls, on the same MjData, in the same order per env.
 *
 * One call (mjb_step):
 *   for every position p in [0, B), in blocks taken in turn by the calling thread and the
 *   workers, the env i = order[p] (a permutation of the envs: the caller puts the running ones
 *   first, so that the blocks share out the stepping evenly however few envs still run):
 *     if run[i]: ctrl_i[:] = act[i]; nstep x mj_step(m_i, d_i); post(m_i, d_i) if post
 *     for every field f: memcpy(dst_f + i * size_f, src_f[i], size_f)
 * A MuJoCo fatal error (mju_error) inside a step is caught with MuJoCo's thread-local error
 * hook (the one the Python bindings use to raise mujoco.FatalError): the step returns the
 * first failing env's index and message instead of ending the process.
 *
 * The other call (mjb_episodes) runs whole episodes with the policy in the loop, each env on
 * one thread from its first step to its last, so that no thread waits for the others between
 * steps and an env's MjData stays in its core's caches: per step, the observation (segments of
 * the gathered fields, clipped), a float32 MLP for the Gaussian mean, the action
 * mean + std * noise, the env step as above, the fields copied into per-step arrays, and the
 * checks that end the episode (MuJoCo's divergence warnings, a non-finite state, the health
 * ranges). Python computes rewards, observations and flags from the gathered fields afterwards.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <math.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*mj_fn)(const void *model, void *data);
typedef void (*error_fn)(const char *msg);
typedef void (*set_error_fn)(error_fn fn);
typedef error_fn (*get_error_fn)(void);

typedef struct {
  /* MuJoCo */
  mj_fn step, post;          /* post may be NULL */
  set_error_fn set_tls_error;
  get_error_fn get_tls_error;
  /* the batch: B envs */
  int64_t num_envs, nu, nstep;
  void *const *models, *const *datas; /* [B] */
  double *const *ctrl;                /* [B] */
  const double *act;                  /* [B, nu] */
  const uint8_t *run;                 /* [B] */
  const int64_t *order;               /* [B] a permutation: the envs in the order taken */
  /* the fields to gather: src[f * B + i] -> dst[f] + i * size[f] */
  int64_t num_fields;
  void *const *src;
  char *const *dst;
  const int64_t *size;
  /* scheduling */
  int64_t block;
  atomic_long next;
  /* the first error */
  atomic_int failed;
  int64_t failed_env;
  char message[512];
} job_t;

typedef struct pool pool_t;
struct pool {
  int num_workers;
  pthread_t *threads;
  pthread_mutex_t mutex;
  pthread_cond_t wake, done;
  long generation;  /* bumped per job */
  int active;       /* workers still on the current job */
  int started;      /* workers started so far (their ids) */
  int wanted;       /* workers that take part in the current job */
  int stop;
  void (*run)(void *job);  /* what the workers do with the current job */
  void *job;
};

static _Thread_local jmp_buf *tls_jump;
static _Thread_local char tls_message[512];

static void catch_error(const char *msg) {
  strncpy(tls_message, msg ? msg : "", sizeof tls_message - 1);
  tls_message[sizeof tls_message - 1] = 0;
  longjmp(*tls_jump, 1);
}

/* Step one env; 0 when fine, 1 after a MuJoCo fatal error. */
static int step_env(job_t *job, int64_t i) {
  jmp_buf here;
  void *m = job->models[i], *d = job->datas[i];
  tls_jump = &here;
  if (setjmp(here)) return 1;
  memcpy(job->ctrl[i], job->act + i * job->nu, (size_t)job->nu * sizeof(double));
  for (int64_t k = 0; k < job->nstep; k++) job->step(m, d);
  if (job->post) job->post(m, d);
  return 0;
}

static void record_failure(job_t *job, int64_t i) {
  int expected = 0;
  if (atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
    job->failed_env = i;
    memcpy(job->message, tls_message, sizeof job->message);
  }
}

static void drain(void *arg) {
  job_t *job = arg;
  const int64_t B = job->num_envs;
  error_fn previous = job->get_tls_error();
  job->set_tls_error(catch_error);
  for (;;) {
    int64_t start = atomic_fetch_add(&job->next, 1) * job->block;
    if (start >= B) break;
    int64_t end = start + job->block < B ? start + job->block : B;
    for (int64_t p = start; p < end; p++) {
      int64_t i = job->order[p];
      if (job->run[i] && !atomic_load(&job->failed) && step_env(job, i))
        record_failure(job, i);
      for (int64_t f = 0; f < job->num_fields; f++)
        memcpy(job->dst[f] + i * job->size[f], job->src[f * B + i], (size_t)job->size[f]);
    }
  }
  job->set_tls_error(previous);
}

static void *worker(void *arg) {
  pool_t *pool = arg;
  int id;
  long seen = 0;
  pthread_mutex_lock(&pool->mutex);
  id = pool->started++;  /* ids 0..num_workers-1, handed out as the workers start */
  for (;;) {
    while (!pool->stop && (pool->generation == seen || id >= pool->wanted)) {
      if (pool->generation != seen) seen = pool->generation;  /* not wanted this time */
      pthread_cond_wait(&pool->wake, &pool->mutex);
    }
    if (pool->stop) break;
    seen = pool->generation;
    void (*run)(void *) = pool->run;
    void *job = pool->job;
    pthread_mutex_unlock(&pool->mutex);
    run(job);
    pthread_mutex_lock(&pool->mutex);
    if (--pool->active == 0) pthread_cond_signal(&pool->done);
  }
  pthread_mutex_unlock(&pool->mutex);
  return NULL;
}

/* A pool of num_threads - 1 workers (the caller of mjb_run is the other thread). */
pool_t *mjb_pool_new(int num_threads) {
  pool_t *pool = calloc(1, sizeof *pool);
  if (!pool) return NULL;
  pool->num_workers = num_threads > 1 ? num_threads - 1 : 0;
  pool->threads = calloc(pool->num_workers ? pool->num_workers : 1, sizeof(pthread_t));
  pthread_mutex_init(&pool->mutex, NULL);
  pthread_cond_init(&pool->wake, NULL);
  pthread_cond_init(&pool->done, NULL);
  for (int k = 0; k < pool->num_workers; k++)
    if (pthread_create(&pool->threads[k], NULL, worker, pool)) {
      pool->num_workers = k;
      break;
    }
  return pool;
}

void mjb_pool_free(pool_t *pool) {
  if (!pool) return;
  pthread_mutex_lock(&pool->mutex);
  pool->stop = 1;
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->mutex);
  for (int k = 0; k < pool->num_workers; k++) pthread_join(pool->threads[k], NULL);
  pthread_cond_destroy(&pool->wake);
  pthread_cond_destroy(&pool->done);
  pthread_mutex_destroy(&pool->mutex);
  free(pool->threads);
  free(pool);
}

/* Run `run(job)` on the calling thread and up to threads - 1 of the pool's workers; return when
 * all have finished. */
static void run_on_pool(pool_t *pool, int threads, void (*run)(void *), void *job) {
  int helpers = threads - 1 < pool->num_workers ? threads - 1 : pool->num_workers;
  if (helpers > 0) {
    pthread_mutex_lock(&pool->mutex);
    pool->run = run;
    pool->job = job;
    pool->wanted = helpers;
    pool->active = helpers;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
  }
  run(job);
  if (helpers > 0) {
    pthread_mutex_lock(&pool->mutex);
    while (pool->active > 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pool->job = NULL;
    pthread_mutex_unlock(&pool->mutex);
  }
}

/* One batched step on `threads` threads (the caller included). Returns -1 when every env
 * stepped, else the index of an env whose step raised a MuJoCo fatal error (its message is
 * copied into `message`, 512 bytes; the other envs were stepped or left as they were). */
int64_t mjb_step(pool_t *pool, int threads, int64_t block, mj_fn step, mj_fn post,
                 set_error_fn set_tls_error, get_error_fn get_tls_error, int64_t num_envs,
                 int64_t nu, int64_t nstep, void *const *models, void *const *datas,
                 double *const *ctrl, const double *act, const uint8_t *run,
                 const int64_t *order, int64_t num_fields,
                 void *const *src, char *const *dst, const int64_t *size, char *message) {
  job_t job = {.step = step, .post = post, .set_tls_error = set_tls_error,
               .get_tls_error = get_tls_error, .num_envs = num_envs, .nu = nu, .nstep = nstep,
               .models = models, .datas = datas, .ctrl = ctrl, .act = act, .run = run, .order = order,
               .num_fields = num_fields, .src = src, .dst = dst, .size = size,
               .block = block > 0 ? block : 1, .failed_env = -1};
  atomic_init(&job.next, 0);
  atomic_init(&job.failed, 0);
  run_on_pool(pool, threads, drain, &job);
  if (job.failed_env >= 0) memcpy(message, job.message, sizeof job.message);
  return job.failed_env;
}

/* ---- whole episodes with the policy in the loop (mjb_episodes) ---------------------------- */

/* The inputs of mjb_episodes: int64 and pointers only (envs/native.py mirrors the layout). */
typedef struct {
  mj_fn step, post; /* post may be NULL */
  set_error_fn set_tls_error;
  get_error_fn get_tls_error;
  int64_t num_envs, nu, nstep, horizon;
  void *const *models, *const *datas; /* [B] */
  double *const *ctrl;                /* [B] */
  /* fields gathered after every step: src[f * B + i] -> dst[f] + (t * B + i) * size[f] */
  int64_t num_fields;
  void *const *src;
  char *const *dst;
  const int64_t *size;
  /* the observation: segment s is float64 field seg_field[s], elements [seg_start[s],
   * seg_start[s] + seg_count[s]), clipped to [seg_low[s], seg_high[s]], cast to float32 */
  int64_t num_segments;
  const int64_t *seg_field, *seg_start, *seg_count;
  const double *seg_low, *seg_high;
  /* what ends an episode after a step: a divergence warning counted (int32 [mjNWARNING, 2]
   * stats in field warning_field, the counters warning_ids), a non-finite element in one of the
   * float64 fields finite_field, or a failed health check: element check_index[c] of float64
   * field check_field[c] outside low < v < high (low <= v <= high where check_inclusive[c]) */
  int64_t warning_field, num_warnings;
  const int64_t *warning_ids;
  int64_t num_finite;
  const int64_t *finite_field;
  int64_t num_checks;
  const int64_t *check_field, *check_index, *check_inclusive;
  const double *check_low, *check_high;
  /* the policy: an MLP layer_sizes[0] -> ... -> layer_sizes[num_layers] (= nu), ReLU (tanh if
   * use_tanh) between layers; weight[l] [tasks, in, out] (transposed), bias[l] [tasks, out] */
  int64_t num_layers;
  const int64_t *layer_sizes;
  const float *const *weight;
  const float *const *bias;
  int64_t use_tanh;
  const float *std;       /* [tasks, nu] */
  const int64_t *task_of; /* [B] the task (row of weight, bias, std) of every env */
  const float *noise;     /* [T, B, nu] */
  /* outputs */
  float *actions;      /* [T, B, nu] */
  int64_t *length;     /* [B] steps taken */
  uint8_t *bad_action; /* [B] 1: the episode stopped at a non-finite action (not applied) */
  int64_t block;
} episodes_args_t;

#define MJB_MAX_WARNINGS 16 /* divergence counters watched at most */

typedef struct {
  const episodes_args_t *args;
  atomic_long next;
  atomic_int failed;
  int64_t failed_env, failed_kind; /* kind 1: MuJoCo fatal error; 3: out of memory */
  char message[512];
} episodes_job_t;

/* One layer: y = act(x W + b), summed over the inputs in order (W transposed, [in, out]). */
static void dense(const float *x, int64_t n_in, const float *w, const float *b, int64_t n_out,
                  float *y, int activation, int use_tanh) {
  for (int64_t o = 0; o < n_out; o++) y[o] = 0.0f;
  for (int64_t k = 0; k < n_in; k++) {
    const float xk = x[k], *row = w + k * n_out;
    for (int64_t o = 0; o < n_out; o++) y[o] += row[o] * xk;
  }
  for (int64_t o = 0; o < n_out; o++) {
    float v = y[o] + b[o];
    if (activation) v = use_tanh ? tanhf(v) : (v < 0.0f ? 0.0f : v); /* NaN stays NaN */
    y[o] = v;
  }
}

/* The Gaussian mean of observation x for `task`, into `out`; buf holds 2 x the widest layer. */
static void policy_mean(const episodes_args_t *a, int64_t task, const float *x, float *buf,
                        int64_t width, float *out) {
  const float *in = x;
  for (int64_t l = 0; l < a->num_layers; l++) {
    const int64_t n_in = a->layer_sizes[l], n_out = a->layer_sizes[l + 1];
    const int last = l == a->num_layers - 1;
    float *y = last ? out : buf + (l % 2) * width;
    dense(in, n_in, a->weight[l] + task * n_in * n_out, a->bias[l] + task * n_out, n_out, y,
          !last, (int)a->use_tanh);
    in = y;
  }
}

static int episode_over(const episodes_args_t *a, int64_t i, const int32_t *before) {
  const int64_t B = a->num_envs;
  const int32_t *stats = a->src[a->warning_field * B + i];
  for (int64_t k = 0; k < a->num_warnings; k++)
    if (stats[2 * a->warning_ids[k] + 1] > before[k]) return 1;
  for (int64_t f = 0; f < a->num_finite; f++) {
    const int64_t field = a->finite_field[f];
    const double *v = a->src[field * B + i];
    for (int64_t k = 0; k < a->size[field] / (int64_t)sizeof(double); k++)
      if (!isfinite(v[k])) return 1;
  }
  for (int64_t c = 0; c < a->num_checks; c++) {
    const double v = ((const double *)a->src[a->check_field[c] * B + i])[a->check_index[c]];
    const double lo = a->check_low[c], hi = a->check_high[c];
    const int healthy = a->check_inclusive[c] ? (lo <= v && v <= hi) : (lo < v && v < hi);
    if (!healthy) return 1;
  }
  return 0;
}

/* Env i's episode: 0 when fine, 1 after a MuJoCo fatal error. A non-finite action ends it
 * before the action is applied (bad_action[i]; Python decides whether it counts: see
 * MujocoBatchEnv.run_episodes). */
static int run_episode(episodes_job_t *job, int64_t i, float *x, float *buf, int64_t width,
                       float *mean) {
  const episodes_args_t *a = job->args;
  const int64_t B = a->num_envs, nu = a->nu, task = a->task_of[i];
  void *m = a->models[i], *d = a->datas[i];
  const int32_t *stats = a->src[a->warning_field * B + i];
  int32_t before[MJB_MAX_WARNINGS];
  jmp_buf here;
  tls_jump = &here;
  if (setjmp(here)) return 1;
  a->length[i] = 0;
  a->bad_action[i] = 0;
  for (int64_t t = 0; t < a->horizon; t++) {
    int64_t n = 0;
    for (int64_t s = 0; s < a->num_segments; s++) {
      const double *v = (const double *)a->src[a->seg_field[s] * B + i] + a->seg_start[s];
      const double lo = a->seg_low[s], hi = a->seg_high[s];
      for (int64_t k = 0; k < a->seg_count[s]; k++) /* as np.clip: NaN stays NaN */
        x[n++] = (float)(v[k] < lo ? lo : (v[k] > hi ? hi : v[k]));
    }
    policy_mean(a, task, x, buf, width, mean);
    const float *noise = a->noise + (t * B + i) * nu, *std = a->std + task * nu;
    float *action = a->actions + (t * B + i) * nu;
    double *ctrl = a->ctrl[i];
    int finite = 1;
    for (int64_t k = 0; k < nu; k++) {
      const float scaled = std[k] * noise[k]; /* as torch: mean + (std * noise), unfused */
      action[k] = mean[k] + scaled;
      finite &= isfinite(action[k]) != 0;
    }
    if (!finite) {
      a->bad_action[i] = 1;
      return 0;
    }
    for (int64_t k = 0; k < nu; k++) ctrl[k] = (double)action[k];
    for (int64_t k = 0; k < a->num_warnings; k++) before[k] = stats[2 * a->warning_ids[k] + 1];
    for (int64_t k = 0; k < a->nstep; k++) a->step(m, d);
    if (a->post) a->post(m, d);
    for (int64_t f = 0; f < a->num_fields; f++)
      memcpy(a->dst[f] + (t * B + i) * a->size[f], a->src[f * B + i], (size_t)a->size[f]);
    a->length[i] = t + 1;
    if (episode_over(a, i, before)) break;
  }
  return 0;
}

static void drain_episodes(void *arg) {
  episodes_job_t *job = arg;
  const episodes_args_t *a = job->args;
  int64_t width = 1, obs = 0;
  for (int64_t l = 0; l <= a->num_layers; l++)
    if (a->layer_sizes[l] > width) width = a->layer_sizes[l];
  for (int64_t s = 0; s < a->num_segments; s++) obs += a->seg_count[s];
  float *scratch = malloc((size_t)(obs + 3 * width) * sizeof(float));
  if (!scratch) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
      job->failed_env = 0;
      job->failed_kind = 3;
    }
    return;
  }
  error_fn previous = a->get_tls_error();
  a->set_tls_error(catch_error);
  for (;;) {
    int64_t start = atomic_fetch_add(&job->next, 1) * a->block;
    if (start >= a->num_envs || atomic_load(&job->failed)) break;
    int64_t end = start + a->block < a->num_envs ? start + a->block : a->num_envs;
    for (int64_t i = start; i < end && !atomic_load(&job->failed); i++) {
      int expected = 0;
      if (run_episode(job, i, scratch, scratch + obs, width, scratch + obs + 2 * width) &&
          atomic_compare_exchange_strong(&job->failed, &expected, 1)) {
        job->failed_env = i;
        job->failed_kind = 1;
        memcpy(job->message, tls_message, sizeof job->message);
      }
    }
  }
  a->set_tls_error(previous);
  free(scratch);
}

/* Run one episode in every env on `threads` threads, envs taken in blocks of args->block.
 * Returns -1 when all ran, else the index of an env that failed; *kind is then 1 (a MuJoCo
 * fatal error, its message copied into `message`, 512 bytes) or 3 (out of memory); 2 when
 * more than MJB_MAX_WARNINGS warnings are watched (nothing run). After a failure the other
 * envs may be anywhere in their episodes. */
int64_t mjb_episodes(pool_t *pool, int threads, const episodes_args_t *args, int64_t *kind,
                     char *message) {
  episodes_job_t job = {.args = args, .failed_env = -1, .failed_kind = 0};
  atomic_init(&job.next, 0);
  atomic_init(&job.failed, 0);
  *kind = 0;
  if (args->num_warnings > MJB_MAX_WARNINGS) {
    *kind = 2;
    return 0;
  }
  run_on_pool(pool, threads, drain_episodes, &job);
  *kind = job.failed_kind;
  if (job.failed_env >= 0) memcpy(message, job.message, sizeof job.message);
  return job.failed_env;
}

/* The most divergence counters mjb_episodes watches. */
int64_t mjb_max_warnings(void) { return MJB_MAX_WARNINGS; }

/* sizeof(episodes_args_t), and the offset of every field in order into `offsets` (room for
 * `room`); returns the number of fields: envs/native.py checks its mirror of the layout. */
int64_t mjb_episodes_args_layout(int64_t *offsets, int64_t room, int64_t *size) {
#define MJB_FIELD(name) offsetof(episodes_args_t, name)
  const int64_t all[] = {
      MJB_FIELD(step), MJB_FIELD(post), MJB_FIELD(set_tls_error), MJB_FIELD(get_tls_error),
      MJB_FIELD(num_envs), MJB_FIELD(nu), MJB_FIELD(nstep), MJB_FIELD(horizon),
      MJB_FIELD(models), MJB_FIELD(datas), MJB_FIELD(ctrl), MJB_FIELD(num_fields),
      MJB_FIELD(src), MJB_FIELD(dst), MJB_FIELD(size), MJB_FIELD(num_segments),
      MJB_FIELD(seg_field), MJB_FIELD(seg_start), MJB_FIELD(seg_count), MJB_FIELD(seg_low),
      MJB_FIELD(seg_high), MJB_FIELD(warning_field), MJB_FIELD(num_warnings),
      MJB_FIELD(warning_ids), MJB_FIELD(num_finite), MJB_FIELD(finite_field),
      MJB_FIELD(num_checks), MJB_FIELD(check_field), MJB_FIELD(check_index),
      MJB_FIELD(check_inclusive), MJB_FIELD(check_low), MJB_FIELD(check_high),
      MJB_FIELD(num_layers), MJB_FIELD(layer_sizes), MJB_FIELD(weight), MJB_FIELD(bias),
      MJB_FIELD(use_tanh), MJB_FIELD(std), MJB_FIELD(task_of), MJB_FIELD(noise),
      MJB_FIELD(actions), MJB_FIELD(length), MJB_FIELD(bad_action), MJB_FIELD(block)};
#undef MJB_FIELD
  const int64_t count = (int64_t)(sizeof all / sizeof all[0]);
  for (int64_t k = 0; k < count && k < room; k++) offsets[k] = all[k];
  *size = (int64_t)sizeof(episodes_args_t);
  return count;
}

#ifndef MJBATCH_SOURCE_SHA256
#define MJBATCH_SOURCE_SHA256 "unknown"
#endif
/* The SHA-256 of the source this was built from (setup.py passes it). */
const char *mjb_source_sha256(void) { return MJBATCH_SOURCE_SHA256; }

/* The (empty) Python module, so that the import system builds, installs and finds this file. */
static struct PyModuleDef mjbatch_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_mjbatch",
    .m_doc = "The native stepping loop of envs.mujoco_batch; envs/native.py loads it with ctypes.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__mjbatch(void) { return PyModule_Create(&mjbatch_module); }
