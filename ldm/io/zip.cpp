#include "ldm/io/zip.h"

#include <zlib.h>

#include "ldm/error.h"

namespace ldm::io {

namespace {
uint64_t rd(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace

ZipReader::ZipReader(const uint8_t* data, size_t size, std::string filename)
    : data_(data), size_(size), filename_(std::move(filename)) {
  auto fail = [&](const std::string& w) { return Error(filename_ + ": not a valid zip checkpoint: " + w); };
  if (size_ < 22) throw fail("file too short");
  // End of central directory: last signature within the final 64 KiB + 22 bytes.
  size_t lo = size_ > 65557 ? size_ - 65557 : 0;
  size_t eocd = SIZE_MAX;
  for (size_t i = size_ - 22 + 1; i-- > lo;)
    if (rd(data_ + i, 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd == SIZE_MAX) throw fail("no end-of-central-directory record");
  uint64_t count = rd(data_ + eocd + 10, 2);
  uint64_t cd_size = rd(data_ + eocd + 12, 4);
  uint64_t cd_off = rd(data_ + eocd + 16, 4);
  if ((count == 0xffff || cd_off == 0xffffffff || cd_size == 0xffffffff) && eocd >= 20 &&
      rd(data_ + eocd - 20, 4) == 0x07064b50) {
    uint64_t z64 = rd(data_ + eocd - 20 + 8, 8);
    if (z64 > size_ || size_ - z64 < 56 || rd(data_ + z64, 4) != 0x06064b50) throw fail("bad ZIP64 record");
    count = rd(data_ + z64 + 32, 8);
    cd_size = rd(data_ + z64 + 40, 8);
    cd_off = rd(data_ + z64 + 48, 8);
  }
  if (cd_off > size_ || cd_size > size_ - cd_off) throw fail("central directory out of range");
  if (count > cd_size / 46) throw fail("entry count exceeds the central directory");
  uint64_t p = cd_off, end = cd_off + cd_size;
  for (uint64_t k = 0; k < count; ++k) {
    if (end - p < 46 || rd(data_ + p, 4) != 0x02014b50) throw fail("bad central directory entry");
    ZipEntry e;
    e.method = static_cast<uint16_t>(rd(data_ + p + 10, 2));
    e.comp_size = rd(data_ + p + 20, 4);
    e.size = rd(data_ + p + 24, 4);
    uint64_t nlen = rd(data_ + p + 28, 2), xlen = rd(data_ + p + 30, 2), clen = rd(data_ + p + 32, 2);
    uint64_t local = rd(data_ + p + 42, 4);
    if (end - p - 46 < nlen + xlen + clen) throw fail("central directory entry truncated");
    e.name.assign(reinterpret_cast<const char*>(data_ + p + 46), nlen);
    // ZIP64 extra field: the 0xffffffff fields follow in order size, comp, offset.
    const uint8_t* x = data_ + p + 46 + nlen;
    for (uint64_t q = 0; q + 4 <= xlen;) {
      uint64_t id = rd(x + q, 2), len = rd(x + q + 2, 2);
      if (q + 4 + len > xlen) break;
      if (id == 1) {
        uint64_t f = q + 4;
        auto take = [&](uint64_t& field) {
          if (field == 0xffffffff && f + 8 <= q + 4 + len) {
            field = rd(x + f, 8);
            f += 8;
          }
        };
        take(e.size);
        take(e.comp_size);
        take(local);
      }
      q += 4 + len;
    }
    if (local > size_ || size_ - local < 30 || rd(data_ + local, 4) != 0x04034b50)
      throw fail("entry \"" + e.name + "\": bad local header");
    uint64_t lnlen = rd(data_ + local + 26, 2), lxlen = rd(data_ + local + 28, 2);
    e.data_offset = local + 30 + lnlen + lxlen;
    if (e.data_offset > size_ || e.comp_size > size_ - e.data_offset)
      throw fail("entry \"" + e.name + "\": data out of range");
    if (e.method != 0 && e.method != 8)
      throw fail("entry \"" + e.name + "\": unsupported compression method " + std::to_string(e.method));
    if (e.method == 0 && e.size != e.comp_size) throw fail("entry \"" + e.name + "\": stored sizes differ");
    entries_.push_back(std::move(e));
    p += 46 + nlen + xlen + clen;
  }
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

const ZipEntry* ZipReader::find_suffix(const std::string& suffix) const {
  for (const auto& e : entries_) {
    auto slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash + 1, std::string::npos, suffix) == 0) return &e;
  }
  return nullptr;
}

const uint8_t* ZipReader::stored_data(const ZipEntry& e) const {
  if (e.method != 0) throw Error(filename_ + ": entry \"" + e.name + "\" is compressed; expected stored");
  return data_ + e.data_offset;
}

std::string ZipReader::read(const ZipEntry& e) const {
  if (e.method == 0) return std::string(reinterpret_cast<const char*>(data_ + e.data_offset), e.size);
  // Deflate: never allocate beyond the declared size, and that size is bounded
  // by the best deflate ratio (1032:1) so a tiny entry cannot claim gigabytes.
  if (e.size / 1032 > e.comp_size + 1) throw Error(filename_ + ": entry \"" + e.name + "\": implausible size");
  std::string out(e.size, '\0');
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw Error(filename_ + ": zlib init failed");
  zs.next_in = const_cast<Bytef*>(data_ + e.data_offset);
  zs.avail_in = static_cast<uInt>(e.comp_size);
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(e.size);
  int rc = inflate(&zs, Z_FINISH);
  uint64_t got = zs.total_out;
  inflateEnd(&zs);
  if (rc != Z_STREAM_END || got != e.size) throw Error(filename_ + ": entry \"" + e.name + "\": corrupt deflate data");
  return out;
}

}  // namespace ldm::io
