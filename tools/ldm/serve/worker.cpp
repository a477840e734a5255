#include "tools/ldm/serve/worker.h"

#include <chrono>
#include <random>

#include "ldm/error.h"
#include "ldm/io/base64.h"
#include "ldm/io/image.h"

namespace ldm::serve {

Worker::Worker(std::function<std::shared_ptr<pipeline::Pipeline>(const std::string&)> load, const std::string& name,
               size_t capacity, std::string preview_kind)
    : load_(std::move(load)), capacity_(capacity), preview_kind_(std::move(preview_kind)), name_(name) {
  pipe_ = load_(name);
  thread_ = std::thread([this] { loop(); });
}

Worker::~Worker() { shutdown(); }

Worker::Ticket Worker::submit(Job job) {
  std::lock_guard<std::mutex> l(mu_);
  if (stopping_) throw HttpError(503, "shutting down", "the server is stopping; no new jobs");
  if (queue_.size() >= capacity_)
    throw HttpError(429, "queue full", std::to_string(queue_.size()) + " jobs are waiting (--queue " +
                                           std::to_string(capacity_) + "); retry later");
  auto it = std::make_unique<Item>();
  it->job = std::move(job);
  it->abandoned = std::make_shared<std::atomic<bool>>(false);
  Ticket t{it->done.get_future(), it->abandoned};
  queue_.push_back(std::move(it));
  cv_.notify_one();
  return t;
}

Outcome Worker::switch_checkpoint(const std::string& name) {
  Job job;
  job.checkpoint = name;
  std::future<Outcome> f;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) throw HttpError(503, "shutting down", "the server is stopping");
    auto it = std::make_unique<Item>();
    it->job = std::move(job);
    it->switch_only = true;
    it->abandoned = std::make_shared<std::atomic<bool>>(false);
    f = it->done.get_future();
    queue_.push_back(std::move(it));  // not bounded: a switch is cheap to hold
    cv_.notify_one();
  }
  return f.get();
}

void Worker::interrupt() {
  std::lock_guard<std::mutex> l(mu_);
  if (busy_) {
    interrupt_ = true;
    progress_.interrupted = true;
  }
}

void Worker::shutdown() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    for (auto& it : queue_) it->done.set_value(Outcome{503, "shutting down", "the server stopped before this job ran", {}, {}});
    queue_.clear();
    interrupt_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Progress Worker::progress() {
  std::lock_guard<std::mutex> l(mu_);
  Progress p = progress_;
  p.job_count = static_cast<int64_t>(queue_.size()) + (busy_ ? 1 : 0);
  return p;
}

std::shared_ptr<pipeline::Pipeline> Worker::pipeline() {
  std::lock_guard<std::mutex> l(mu_);
  return pipe_;
}

std::string Worker::checkpoint() {
  std::lock_guard<std::mutex> l(mu_);
  return name_;
}

void Worker::loop() {
  for (;;) {
    std::unique_ptr<Item> it;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      it = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      interrupt_ = false;
      progress_ = Progress{};
    }
    Outcome out;
    if (*it->abandoned) {
      out = {499, "client gone", "the client disconnected while queued", {}, {}};
    } else {
      try {
        out = run(*it);
      } catch (const HttpError& e) {
        out = {e.status, e.error, e.what(), {}, {}};
      } catch (const Error& e) {
        out = {400, "invalid request", e.what(), {}, {}};
      } catch (const c10::Error& e) {  // one line, without libtorch's backtrace
        out = {500, "internal error", e.what_without_backtrace(), {}, {}};
      } catch (const std::exception& e) {
        out = {500, "internal error", e.what(), {}, {}};
      }
    }
    it->done.set_value(std::move(out));
    std::lock_guard<std::mutex> l(mu_);
    busy_ = false;
  }
}

void Worker::ensure_checkpoint(const std::string& name) {
  if (name == checkpoint()) return;
  auto p = load_(name);  // throws HttpError 404 for names not in the directory
  std::lock_guard<std::mutex> l(mu_);
  pipe_ = std::move(p);
  name_ = name;
}

Outcome Worker::run(Item& it) {
  if (!it.job.checkpoint.empty()) ensure_checkpoint(it.job.checkpoint);
  Outcome out;
  if (it.switch_only) return out;
  auto p = pipeline();
  auto req = it.job.req;
  if (req.seed == -1) req.seed = static_cast<int64_t>(std::random_device{}());
  const auto t0 = std::chrono::steady_clock::now();
  auto last_preview = t0 - std::chrono::seconds(10);
  pipeline::GenerateCallbacks cb;
  cb.cancelled = [this] { return interrupt_.load(); };
  cb.progress = [&](const pipeline::ProgressInfo& i) {
    std::string png;
    const auto now = std::chrono::steady_clock::now();
    if (preview_kind_ != "none" && i.denoised.defined() && now - last_preview > std::chrono::milliseconds(500)) {
      last_preview = now;
      try {
        png = io::base64_encode(io::encode_png(p->preview(i.denoised.slice(0, 0, 1), preview_kind_)[0]));
      } catch (const Error&) {  // a model a preview cannot show: none
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    progress_.step = i.step;
    progress_.steps = i.steps;
    progress_.elapsed = std::chrono::duration<double>(now - t0).count();
    if (!png.empty()) progress_.preview_png_b64 = std::move(png);
  };
  for (int64_t i = 0; i < it.job.n_iter; ++i) {
    auto r = req;
    r.seed = req.seed + i * req.batch;  // A1111: each batch continues the seeds
    auto res = it.job.hires ? pipeline::generate_hires(*p, r, *it.job.hires, cb) : p->generate(r, cb);
    if (res.status == pipeline::Status::Cancelled) {
      const bool stopping = [&] {
        std::lock_guard<std::mutex> l(mu_);
        return stopping_;
      }();
      return stopping ? Outcome{503, "shutting down", "the server stopped during this job: " + res.message, {}, {}}
                      : Outcome{409, "interrupted", "interrupted: " + res.message, {}, {}};
    }
    out.seeds.push_back(r.seed);
    out.results.push_back(std::move(res));
  }
  return out;
}

}  // namespace ldm::serve
