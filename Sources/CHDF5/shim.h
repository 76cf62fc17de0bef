#ifndef EMFLOW_CHDF5_SHIM_H
#define EMFLOW_CHDF5_SHIM_H
// The MPI build of HDF5 (Debian's libhdf5-openmpi-dev): one library for serial files and for
// collective parallel writes. Found through pkg-config `hdf5-openmpi`.
#include <hdf5.h>
#include <mpi.h>
#include <string.h>
#include <stdlib.h>
#include <dirent.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/stat.h>
#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

// Starts writeback of a file's dirty pages without waiting (Linux sync_file_range, SYNC_FILE_RANGE_WRITE),
// so a later fsync has little left to do.
static inline int emflow_start_writeback(int fd) { return (int)syscall(SYS_sync_file_range, fd, (long)0, (long)0, 2); }

// Whether `fd`'s file system takes direct I/O (O_DIRECT) on this file and with which alignment of the
// memory and of file offsets/lengths (statx STATX_DIOALIGN, Linux 6.1+); -1 where it does not say
// (older kernels, tmpfs, network file systems), and then emflow writes through the page cache.
static inline int emflow_direct_io_alignment(int fd, unsigned *memory, unsigned *offset) {
#ifdef STATX_DIOALIGN
    struct statx s;
    memset(&s, 0, sizeof s);
    if (syscall(SYS_statx, fd, "", 0x1000 /* AT_EMPTY_PATH */, STATX_DIOALIGN, &s) != 0) return -1;
    if (!(s.stx_mask & STATX_DIOALIGN) || s.stx_dio_offset_align == 0 || s.stx_dio_mem_align == 0) return -1;
    *memory = s.stx_dio_mem_align;
    *offset = s.stx_dio_offset_align;
    return 0;
#else
    (void)fd; (void)memory; (void)offset;
    return -1;
#endif
}

// Keeps freed memory in the process's heap for reuse: blocks under `mmap_below` bytes come from the
// heap (not a mapping of their own each), and up to `keep` free bytes stay at its top instead of
// going back to the kernel. 0 where the C library has no such settings (not glibc).
static inline int emflow_keep_freed_heap(size_t mmap_below, size_t keep) {
#ifdef __GLIBC__
    return mallopt(M_MMAP_THRESHOLD, (int)mmap_below) == 1 && mallopt(M_TRIM_THRESHOLD, (int)keep) == 1;
#else
    (void)mmap_below; (void)keep;
    return 0;
#endif
}

// O_DIRECT (glibc names it only under _GNU_SOURCE; __O_DIRECT is the architecture's value).
static inline int emflow_o_direct(void) { return __O_DIRECT; }

// Where a chunk (by its first element's coordinates) lies in the file and how many bytes it holds;
// -1 where HDF5 cannot say (older than 1.10.5, or the chunk is not allocated).
static inline int emflow_chunk_location(hid_t dset, const hsize_t *coord, haddr_t *address, hsize_t *size) {
#if H5_VERSION_GE(1, 10, 5)
    unsigned mask = 0;
    if (H5Dget_chunk_info_by_coord(dset, coord, &mask, address, size) < 0) return -1;
    return *address == HADDR_UNDEF ? -1 : 0;
#else
    (void)dset; (void)coord; (void)address; (void)size;
    return -1;
#endif
}

// HDF5's property classes, types and flags are macros over globals that need H5open() first;
// Swift can import neither, so each gets a getter.
static inline hid_t emflow_h5p_file_create(void) { return H5P_FILE_CREATE; }
static inline hid_t emflow_h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t emflow_h5p_dataset_create(void) { return H5P_DATASET_CREATE; }
static inline hid_t emflow_h5p_dataset_xfer(void) { return H5P_DATASET_XFER; }
static inline hid_t emflow_h5p_dataset_access(void) { return H5P_DATASET_ACCESS; }
static inline hid_t emflow_h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline hid_t emflow_h5t_c_s1(void) { return H5T_C_S1; }
static inline hid_t emflow_h5t_native_int8(void) { return H5T_NATIVE_INT8; }
static inline hid_t emflow_h5t_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t emflow_h5t_native_int16(void) { return H5T_NATIVE_INT16; }
static inline hid_t emflow_h5t_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t emflow_h5t_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t emflow_h5t_native_uint32(void) { return H5T_NATIVE_UINT32; }
static inline hid_t emflow_h5t_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t emflow_h5t_native_uint64(void) { return H5T_NATIVE_UINT64; }
static inline hid_t emflow_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t emflow_h5t_native_double(void) { return H5T_NATIVE_DOUBLE; }
// File types, little-endian, as NeXus readers expect on every platform.
static inline hid_t emflow_h5t_std_i8le(void) { return H5T_STD_I8LE; }
static inline hid_t emflow_h5t_std_u8le(void) { return H5T_STD_U8LE; }
static inline hid_t emflow_h5t_std_i16le(void) { return H5T_STD_I16LE; }
static inline hid_t emflow_h5t_std_u16le(void) { return H5T_STD_U16LE; }
static inline hid_t emflow_h5t_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t emflow_h5t_std_u32le(void) { return H5T_STD_U32LE; }
static inline hid_t emflow_h5t_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t emflow_h5t_std_u64le(void) { return H5T_STD_U64LE; }
static inline hid_t emflow_h5t_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t emflow_h5t_ieee_f64le(void) { return H5T_IEEE_F64LE; }
static inline size_t emflow_h5t_variable(void) { return H5T_VARIABLE; }
static inline unsigned emflow_h5f_acc_excl(void) { return H5F_ACC_EXCL; }
static inline unsigned emflow_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned emflow_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned emflow_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
static inline hsize_t emflow_h5s_unlimited(void) { return H5S_UNLIMITED; }

// MPI handles are macros over globals as well.
static inline MPI_Comm emflow_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Info emflow_mpi_info_null(void) { return MPI_INFO_NULL; }

// The few MPI calls emflow's collective writer needs, with the handles (macros) filled in.
// MPI_THREAD_SERIALIZED: Swift may run the calls on any thread, but never two at once.
static inline int emflow_mpi_init(void) {
    int flag = 0; MPI_Initialized(&flag);
    if (flag) return MPI_SUCCESS;
    int provided = 0;
    return MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
}
// TCP_NODELAY on every TCP socket of this process (Communicator.sendSmallMessagesAtOnce says why).
static inline int emflow_tcp_nodelay_all(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end; long fd = strtol(e->d_name, &end, 10);
        if (*end != 0 || fd < 0 || fd == dirfd(d)) continue;
        int type = 0, domain = 0; socklen_t l = sizeof type;
        if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM) continue;
        l = sizeof domain;
        if (getsockopt((int)fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0 || (domain != AF_INET && domain != AF_INET6)) continue;
        int one = 1;
        if (setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0) n++;
    }
    closedir(d);
    return n;
}
static inline int emflow_mpi_finalize(void) {
    int init = 0, fin = 0; MPI_Initialized(&init); MPI_Finalized(&fin);
    if (!init || fin) return MPI_SUCCESS;
    emflow_tcp_nodelay_all();
    return MPI_Finalize();
}
static inline int emflow_mpi_rank(void) { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
static inline int emflow_mpi_size(void) { int n = 1; MPI_Comm_size(MPI_COMM_WORLD, &n); return n; }
// A rank often waits on another that is still busy (rank 0 creating the file, hashing it, closing
// it). MPI's blocking calls wait by polling, a core at full speed each; these start the nonblocking
// collective and wait asleep after a short poll, so the waiting rank leaves its core to the one it
// waits on. The sleep grows from 10 µs to 1 ms: a short wait costs little latency, a long one little CPU.
static inline int emflow_mpi_wait_asleep(MPI_Request *r) {
    int done = 0;
    for (int i = 0; i < 32; i++) {
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || done) return rc;
    }
    long ns = 10000;
    for (;;) {
        struct timespec ts = { 0, ns };
        nanosleep(&ts, NULL);
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS || done) return rc;
        if (ns < 1000000) ns *= 2;
    }
}
#define EMFLOW_MPI_ASLEEP(start) do { MPI_Request r_; int rc_ = (start); return rc_ == MPI_SUCCESS ? emflow_mpi_wait_asleep(&r_) : rc_; } while (0)
static inline int emflow_mpi_bcast_bytes(void *buf, int count, int root) { EMFLOW_MPI_ASLEEP(MPI_Ibcast(buf, count, MPI_BYTE, root, MPI_COMM_WORLD, &r_)); }
static inline int emflow_mpi_allreduce_i64(long long in, long long *out, MPI_Op op) { EMFLOW_MPI_ASLEEP(MPI_Iallreduce(&in, out, 1, MPI_LONG_LONG, op, MPI_COMM_WORLD, &r_)); }
static inline int emflow_mpi_allreduce_min_i64(long long in, long long *out) { return emflow_mpi_allreduce_i64(in, out, MPI_MIN); }
static inline int emflow_mpi_allreduce_max_i64(long long in, long long *out) { return emflow_mpi_allreduce_i64(in, out, MPI_MAX); }
static inline int emflow_mpi_allreduce_sum_i64(long long in, long long *out) { return emflow_mpi_allreduce_i64(in, out, MPI_SUM); }
static inline int emflow_mpi_allreduce_sum_f64(double *inout, int count) { EMFLOW_MPI_ASLEEP(MPI_Iallreduce(MPI_IN_PLACE, inout, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r_)); }
static inline int emflow_mpi_barrier(void) { EMFLOW_MPI_ASLEEP(MPI_Ibarrier(MPI_COMM_WORLD, &r_)); }
// How many ranks of the world share this rank's node (memory, and so the page cache).
static inline int emflow_mpi_node_size(void) {
    MPI_Comm node; int n = 0;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return 0;
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return n;
}
static inline void emflow_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }
// Memory that every rank of the world can read, on one node: this rank's `bytes` of an MPI shared
// window (each rank's part starting on a page of its own). Errors are returned, not fatal. 0 on success.
static inline int emflow_mpi_win_allocate_shared(long long bytes, void **base, MPI_Win *win) {
    MPI_Comm comm;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &comm) != MPI_SUCCESS) return -1;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    int rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, comm, base, win);
    MPI_Info_free(&info);
    if (rc == MPI_SUCCESS) MPI_Win_set_errhandler(*win, MPI_ERRORS_RETURN);
    MPI_Comm_free(&comm);
    return rc == MPI_SUCCESS ? 0 : -1;
}
// Where `rank`'s part of the window is mapped in this process (NULL if MPI cannot say).
static inline void *emflow_mpi_win_shared_part(MPI_Win win, int rank) {
    MPI_Aint size = 0; int unit = 0; void *p = NULL;
    return MPI_Win_shared_query(win, rank, &size, &unit, &p) == MPI_SUCCESS ? p : NULL;
}
static inline int emflow_mpi_win_free(MPI_Win *win) { return MPI_Win_free(win); }
// A counter in shared memory that one process advances and others wait on.
static inline void emflow_store_release_i64(void *p, long long v) { __atomic_store_n((long long *)p, v, __ATOMIC_RELEASE); }
static inline long long emflow_load_acquire_i64(const void *p) { return __atomic_load_n((const long long *)p, __ATOMIC_ACQUIRE); }
// The MPI-IO file driver on the world communicator, and collective transfers.
static inline herr_t emflow_h5p_set_fapl_mpio_world(hid_t fapl) { return H5Pset_fapl_mpio(fapl, MPI_COMM_WORLD, MPI_INFO_NULL); }
static inline herr_t emflow_h5p_set_dxpl_collective(hid_t dxpl) { return H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE); }

// HDF5 prints its error stack to stderr unless told not to; emflow reports errors itself, so the
// stack is walked into a per-thread buffer and turned into one message.
static inline char *emflow_h5_error_buffer(void) { static _Thread_local char buffer[1024]; return buffer; }
static herr_t emflow_h5_walk(unsigned n, const H5E_error2_t *e, void *data) {
    (void)data;
    char *b = emflow_h5_error_buffer();
    size_t used = strlen(b);
    if (used + 4 >= 1024 || e->desc == NULL) return 0;
    if (n > 0 && used > 0) { strncat(b, "; ", 1023 - used); used += 2; }
    if (e->func_name) { strncat(b, e->func_name, 1023 - used); used = strlen(b); strncat(b, ": ", 1023 - used); used = strlen(b); }
    strncat(b, e->desc, 1023 - used);
    return 0;
}
static inline void emflow_h5_silence(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
static inline const char *emflow_h5_take_error(void) {
    emflow_h5_error_buffer()[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, emflow_h5_walk, NULL);
    H5Eclear2(H5E_DEFAULT);
    return emflow_h5_error_buffer();
}
// Name-ordered listings of a group's links and an object's attributes (for reading a file's tree).
// The H5Literate_by_name macro resolves to the call of the installed HDF5 (1.10: H5L_info_t;
// 1.12+: H5L_info2_t), so emflow builds against either; Swift only sees the names.
typedef int (*emflow_name_cb)(const char *name, void *ctx);
typedef struct { emflow_name_cb cb; void *ctx; } emflow_name_iter;
static herr_t emflow_link_visit(hid_t g, const char *name, const H5L_info_t *info, void *d) {
    (void)g; (void)info; emflow_name_iter *it = (emflow_name_iter *)d; return it->cb(name, it->ctx);
}
static inline herr_t emflow_list_links(hid_t loc, const char *group, emflow_name_cb cb, void *ctx) {
    emflow_name_iter it = {cb, ctx}; hsize_t idx = 0;
    return H5Literate_by_name(loc, group, H5_INDEX_NAME, H5_ITER_INC, &idx, emflow_link_visit, &it, H5P_DEFAULT);
}
static herr_t emflow_attr_visit(hid_t o, const char *name, const H5A_info_t *info, void *d) {
    (void)o; (void)info; emflow_name_iter *it = (emflow_name_iter *)d; return it->cb(name, it->ctx);
}
static inline herr_t emflow_list_attributes(hid_t obj, emflow_name_cb cb, void *ctx) {
    emflow_name_iter it = {cb, ctx}; hsize_t idx = 0;
    return H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, emflow_attr_visit, &it);
}
#endif
