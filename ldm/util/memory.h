// The process's memory: peak resident size, and giving free pages back.
#pragma once

namespace ldm {

// The process's peak resident memory so far (ru_maxrss), GB.
double peak_rss_gb();
// Hands memory the allocator holds free back to the kernel: tcmalloc keeps
// freed blocks (why it is fast here), so freeing a module's weights alone does
// not lower the process's footprint. No-op without tcmalloc.
void return_free_memory();

}  // namespace ldm
