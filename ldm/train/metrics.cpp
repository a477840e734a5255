#include "ldm/train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ldm/error.h"
#include "ldm/io/atomic_file.h"

namespace ldm {

uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256];
  static bool init = [] {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;  // Castagnoli, reflected
      table[i] = c;
    }
    return true;
  }();
  (void)init;
  uint32_t c = 0xFFFFFFFFu;
  auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

namespace {
uint32_t masked_crc(const std::string& s) {
  uint32_t c = crc32c(s.data(), s.size());
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void field_bytes(std::string& out, int field, const std::string& b) {
  varint(out, (static_cast<uint64_t>(field) << 3) | 2);
  varint(out, b.size());
  out += b;
}
template <class T>
void field_fixed(std::string& out, int field, T v, int wire) {
  varint(out, (static_cast<uint64_t>(field) << 3) | wire);
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // little-endian hosts
  out.append(buf, sizeof(T));
}
std::string event_header(double wall) {
  std::string e;
  field_fixed(e, 1, wall, 1);  // wall_time (double)
  varint(e, (2 << 3) | 0);     // step = 0
  varint(e, 0);
  field_bytes(e, 3, "brain.Event:2");  // file_version
  return e;
}
double now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

std::string tf_record(const std::string& payload) {
  std::string len(8, '\0');
  uint64_t n = payload.size();
  std::memcpy(len.data(), &n, 8);
  std::string r = len;
  uint32_t lc = masked_crc(len), dc = masked_crc(payload);
  r.append(reinterpret_cast<char*>(&lc), 4);
  r += payload;
  r.append(reinterpret_cast<char*>(&dc), 4);
  return r;
}

std::string tf_event_scalar(double wall, int64_t step, const std::string& tag, float value) {
  std::string val;
  field_bytes(val, 1, tag);       // Summary.Value.tag
  field_fixed(val, 2, value, 5);  // simple_value (float)
  std::string summary;
  field_bytes(summary, 1, val);
  std::string e;
  field_fixed(e, 1, wall, 1);
  varint(e, (2 << 3) | 0);
  varint(e, static_cast<uint64_t>(step));
  field_bytes(e, 5, summary);
  return e;
}

// SessionLog{status: START} at `step`: TensorBoard discards the events of
// this run's earlier files from `step` on (its restart handling).
std::string tf_event_session_start(double wall, int64_t step) {
  std::string log;
  varint(log, (1 << 3) | 0);  // SessionLog.status = START
  varint(log, 1);
  std::string e;
  field_fixed(e, 1, wall, 1);
  varint(e, (2 << 3) | 0);
  varint(e, static_cast<uint64_t>(step));
  field_bytes(e, 6, log);
  return e;
}

namespace {
// Keeps the header and the rows whose step is <= `last`.
void truncate_csv(const std::filesystem::path& path, int64_t last) {
  std::ifstream in(path);
  std::string line, out;
  bool header = true;
  while (std::getline(in, line)) {
    if (header || std::strtoll(line.c_str(), nullptr, 10) <= last) out += line + "\n";
    header = false;
  }
  in.close();
  write_file_atomic(path.string(), out.data(), out.size());
}
}  // namespace

MetricsLogger::MetricsLogger(const std::string& dir, int64_t resumed_at) : dir_(dir) {
  namespace fs = std::filesystem;
  fs::create_directories(fs::path(dir) / "tensorboard");
  auto csv_path = fs::path(dir) / "metrics.csv";
  if (fs::exists(csv_path)) {  // resume: keep the columns
    if (resumed_at >= 0) truncate_csv(csv_path, resumed_at);
    std::ifstream in(csv_path);
    std::string header;
    std::getline(in, header);
    size_t at = 0;
    while (at <= header.size() && !header.empty()) {
      size_t comma = header.find(',', at);
      columns_.push_back(header.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
  }
  csv_ = std::fopen(csv_path.c_str(), "a");
  if (!csv_) throw Error(csv_path.string() + ": cannot open for writing");
  char host[64] = "host";
  gethostname(host, sizeof host - 1);
  auto tb_path = fs::path(dir) / "tensorboard" /
                 ("events.out.tfevents." + std::to_string(static_cast<long long>(now())) + "." + host + "." +
                  std::to_string(getpid()));
  tb_ = std::fopen(tb_path.c_str(), "wb");
  if (!tb_) throw Error(tb_path.string() + ": cannot open for writing");
  auto rec = tf_record(event_header(now()));
  if (resumed_at >= 0) rec += tf_record(tf_event_session_start(now(), resumed_at + 1));
  std::fwrite(rec.data(), 1, rec.size(), tb_);
}

MetricsLogger::~MetricsLogger() {
  if (csv_) std::fclose(csv_);
  if (tb_) std::fclose(tb_);
}

// A metric that appears later (the discriminator's loss from disc_start)
// adds a column: the file is rewritten with the wider header, old rows padded.
void MetricsLogger::rewrite_header() {
  namespace fs = std::filesystem;
  auto path = fs::path(dir_) / "metrics.csv";
  std::fclose(csv_);
  std::vector<std::string> rows;
  {
    std::ifstream in(path);
    std::string line;
    bool first = true;
    while (std::getline(in, line)) {
      if (!first) rows.push_back(line);
      first = false;
    }
  }
  std::string out;
  for (auto& c : columns_) out += (out.empty() ? "" : ",") + c;
  out += "\n";
  for (auto& r : rows) {
    size_t have = std::count(r.begin(), r.end(), ',') + 1;
    out += r + std::string(columns_.size() > have ? columns_.size() - have : 0, ',') + "\n";
  }
  write_file_atomic(path.string(), out.data(), out.size());
  csv_ = std::fopen(path.c_str(), "a");
  if (!csv_) throw Error(path.string() + ": cannot open for writing");
}

void MetricsLogger::log(int64_t step, const std::map<std::string, double>& values) {
  bool grew = columns_.empty();
  if (grew) columns_.push_back("step");
  for (auto& [k, v] : values)
    if (std::find(columns_.begin(), columns_.end(), k) == columns_.end()) {
      columns_.push_back(k);
      grew = true;
    }
  if (grew) rewrite_header();
  std::string row = std::to_string(step);
  for (size_t i = 1; i < columns_.size(); ++i) {
    auto it = values.find(columns_[i]);
    char buf[32] = "";
    if (it != values.end()) std::snprintf(buf, sizeof buf, "%.8g", it->second);
    row += std::string(",") + buf;
  }
  std::fprintf(csv_, "%s\n", row.c_str());
  std::fflush(csv_);
  double w = now();
  for (auto& [k, v] : values) {
    auto rec = tf_record(tf_event_scalar(w, step, k, static_cast<float>(v)));
    std::fwrite(rec.data(), 1, rec.size(), tb_);
  }
  std::fflush(tb_);
}

}  // namespace ldm
