"""Names that cross the wire or the process boundary: tasks, metric keys, meta keys, env vars."""

# FLARE task names handled by the site executor.
TASK_TRAIN = "train"
TASK_VALIDATE = "validate"
TASK_SUBMIT_MODEL = "submit_model"
# after training: each site trains the job's initial model on its own data alone, with the same epochs and
# learning-rate schedule as the federated rounds (the job's `train_alone`); cross-site evaluation then
# scores that model on every site's data: "is the shared model better than training alone?"
TASK_TRAIN_ALONE = "train_alone"
# after training: each site attacks the final global model with its own training patients against its
# validation patients (membership inference, privacy/audit.py) and sends back only the scores (AUDIT_KEYS)
TASK_AUDIT = "audit_membership"

# Metric keys reported by sites (FLModel.metrics).
METRIC_TRAIN_LOSS = "train_loss"
# Scores are the task module's METRIC_NAME (seg2d: Dice; heart: accuracy), on the site's validation split.
METRIC_SCORE = "val_score"  # score of the model a site *received*
METRIC_LOCAL_SCORE = "local_score"  # the same score of the site's locally trained model
METRIC_PERSONAL_SCORE = "personalized_score"  # the global model after fine-tuning at the site
METRIC_ALONE_SCORE = "alone_score"  # the model this site trained alone (train_alone), on its own validation data
METRIC_STEPS = "steps"  # optimizer steps of local training this round
METRIC_NUM_TRAIN = "num_train"
METRIC_NUM_VAL = "num_val"
METRIC_SECONDS = "train_seconds"  # local training only
METRIC_TASK_SECONDS = "task_seconds"  # the whole train task at the site: load, evaluate, train, evaluate
# Differential privacy, reported with every train result (and carried in its meta for the site's PrivacyGuard).
METRIC_DP_EPSILON = "dp_epsilon"  # DP-SGD epsilon spent at this site in this job so far, at METRIC_DP_DELTA
METRIC_DP_DELTA = "dp_delta"
METRIC_DP_NOISE = "dp_noise_multiplier"
METRIC_DP_UPDATE_EPSILON = "dp_update_epsilon"  # the Gaussian update filter's own epsilon (at its delta)
# Membership-inference audit result (TASK_AUDIT): counts and scores only, never anything about one patient.
AUDIT_KEYS = ("n_members", "n_nonmembers", "loss_auc", "loss_tpr_at_1pct_fpr", "calibrated_auc",
              "calibrated_tpr_at_1pct_fpr", "fpr_floor", "reference_models")  # fmt: skip
METRIC_AUDIT_ERROR = "audit_error"  # the site's audit failed: why (the job still completes)
METRIC_AUDIT_SECONDS = "audit_seconds"

# Meta keys of tasks and results.
META_FINETUNE_EPOCHS = "finetune_epochs"  # final validation: fine-tune the global model this many epochs
META_MODEL_KIND = "model_kind"  # submit_model: "alone", "personalized" or "local" (last round's training)
META_ALONE_ROUNDS = "alone_rounds"  # train_alone: the job's rounds (epochs and lr schedule as in the job)
# train, validate: the global mean and std of each feature (job option `standardise: federated`), sent with the model
META_FEATURE_STATS = "feature_stats"
# train: the job ids of one logical run, first to current (a resumed job continues its predecessors); sites
# continue their privacy accounting from the ledger of the latest earlier job in the chain
META_RUN_CHAIN = "run_chain"
# Server-optimizer jobs (server_optimizer: FedAdam, FedYogi, FedAdagrad, stepped at the sites; server_opt.py):
META_AGGREGATE_ROUND = "aggregate_of_round"  # train task: its params are the sites' averaged update of this round
META_FINAL_STEP = "final_server_step"  # train task: apply the last step and send the global model; no training
META_PSEUDO_GRADIENT = "pseudo_gradient"  # train result: its params are w_i - w_t, not a model
METRIC_MODEL_SHA = "global_model_sha256"  # train result: fingerprint of the global model the site holds
# train result: what the site's kit approved the job by at deployment ("purpose" or "purpose and job hash")
META_SITE_APPROVAL = "site_approval"

# Shareable header carrying a site's error text to the server when a task fails there.
HEADER_SITE_ERROR = "consortium_site_error"
# Shareable header of a site's refusal to train (privacy budget or floor): the server drops that site.
HEADER_SITE_REFUSED = "consortium_site_refused"
SITE_ERROR_MARKER = "[site-error]"  # server log lines that `consortium status` shows

# Environment variables read by site processes.
ENV_SITE_CONFIG_DIR = "CONSORTIUM_SITE_CONFIGS"  # folder with _defaults.yaml and <site>.yaml (simulator)
KIT_SITE_CONFIG_FOLDER = "consortium"  # <kit>/local/consortium/<site>.yaml, written by `consortium provision`

# Files written by the server workflow into its run directory.
GLOBAL_MODEL_FILE = "global_model.pt"
CROSS_SITE_FILE = "cross_site.json"  # the cross-site matrix: every model on every site's validation data
# Written by each site into its own run directory: its fine-tuned model, which never has to leave it.
PERSONAL_MODEL_FILE = "personalized_model.pt"
ALONE_MODEL_FILE = "alone_model.pt"  # the site's model trained alone; leaves it only for cross-site evaluation
# <site workspace>/consortium_privacy/: <job id>.json, the DP steps a job spent (privacy.ledger), and spending.jsonl,
# the site's append-only ledger across jobs (privacy.spending)
PRIVACY_LEDGER_FOLDER = "consortium_privacy"
# <workspace>/consortium_trail/exchanges.jsonl: the server's and each site's hash-chained record of every task
# payload it sent or received (consortium.audit_trail), outside every job folder
TRAIL_FOLDER = "consortium_trail"
TRAIL_FILE = "exchanges.jsonl"
TRAIL_COMPONENT_ID = "consortium_exchange_trail"  # its component id in a participant's local/privacy.json
SERVER_OPT_FOLDER = "consortium_server_opt"  # <site workspace>/consortium_server_opt/<job id>.npz: (w_t, m, v)
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"  # the server's last complete round (model, ciphertext under HE): resume point
ENCRYPTED_MODEL_FILE = "global_model.encrypted.pt"  # HE jobs: the server's ciphertext checkpoint
