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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <setjmp.h>
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
  job_t *job;
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

static void drain(job_t *job) {
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
    job_t *job = pool->job;
    pthread_mutex_unlock(&pool->mutex);
    drain(job);
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
  int helpers = threads - 1 < pool->num_workers ? threads - 1 : pool->num_workers;
  if (helpers > 0) {
    pthread_mutex_lock(&pool->mutex);
    pool->job = &job;
    pool->wanted = helpers;
    pool->active = helpers;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
  }
  drain(&job);
  if (helpers > 0) {
    pthread_mutex_lock(&pool->mutex);
    while (pool->active > 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pool->job = NULL;
    pthread_mutex_unlock(&pool->mutex);
  }
  if (job.failed_env >= 0) memcpy(message, job.message, sizeof job.message);
  return job.failed_env;
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
