// The server's one worker: jobs run one at a time on the loaded model, the
// rest wait in a bounded queue. Holds the pipeline (switchable among
// --models-dir), the live progress A1111's /progress reports, interruption
// and shutdown.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ldm/pipeline/pipeline.h"
#include "tools/ldm/serve/api.h"

namespace ldm::serve {

struct Outcome {
  int status = 200;
  std::string error, detail;  // when status != 200
  std::vector<pipeline::GenerateResult> results;  // one per n_iter
  std::vector<int64_t> seeds;                     // the seed of each call
};

struct Progress {
  int64_t job_count = 0, step = 0, steps = 0;
  double elapsed = 0;
  bool interrupted = false;
  std::string preview_png_b64;  // the running job's latest preview
};

class Worker {
 public:
  // `load` makes the pipeline of a checkpoint name; `name` is the startup one.
  Worker(std::function<std::shared_ptr<pipeline::Pipeline>(const std::string&)> load, const std::string& name,
         size_t capacity, std::string preview_kind);
  ~Worker();

  struct Ticket {
    std::future<Outcome> result;
    std::shared_ptr<std::atomic<bool>> abandoned;  // set when the client left while queued
  };
  // Throws HttpError 429 when the queue is full, 503 when shutting down.
  Ticket submit(Job job);
  void interrupt();  // the running job stops at its next step
  // Stop: queued jobs answered 503, the running one cancelled; joins the thread.
  void shutdown();

  Progress progress();
  std::shared_ptr<pipeline::Pipeline> pipeline();  // the current one
  std::string checkpoint();                        // its name
  // Switches the model (queued like a job, so it never races a generation).
  Outcome switch_checkpoint(const std::string& name);

 private:
  struct Item {
    Job job;
    std::promise<Outcome> done;
    std::shared_ptr<std::atomic<bool>> abandoned;
    bool switch_only = false;
  };
  void loop();
  Outcome run(Item& it);
  void ensure_checkpoint(const std::string& name);

  std::function<std::shared_ptr<pipeline::Pipeline>(const std::string&)> load_;
  size_t capacity_;
  std::string preview_kind_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Item>> queue_;
  bool stopping_ = false, busy_ = false;
  std::shared_ptr<pipeline::Pipeline> pipe_;
  std::string name_;
  Progress progress_;
  std::atomic<bool> interrupt_{false};
  std::thread thread_;
};

}  // namespace ldm::serve
