# cython: language_level=3, cdivision=True, initializedcheck=False
# cython: embedsignature=True
"""The order-book kernel: ``engine.book_protocol.OrderBook`` in C structures.

Owns the C layout of the book (order and level pools, sorted sides, the id
index) and its match loop; gives exactly the results of the reference
``engine.book.Book`` and takes its constants from there.  It must never write
outside its arrays, keep a Python object per order, or differ from the
reference on valid input.  The design: docs/kernel.md.
"""
cimport cython
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memmove
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check

cdef extern from *:
    """
    #include <stdint.h>
    typedef __int128 cb_i128;

    /* 1 when a*b does not fit int64 (the product is then undefined) */
    #define cb_mul_overflows(a, b, res) __builtin_mul_overflow((a), (b), (res))

    #define CB_NIL (-1)
    #define CB_FEE_BASE 10000
    /* |whole| at most this: whole*10000 + frac fits int64 (fast conversion back) */
    #define CB_FEE_WHOLE_FAST 922337203685476LL
    #define CB_SLOTS_MAX 2147483646   /* slot numbers are int32; NIL is -1 */

    /* A broken invariant on a path that cannot raise: stop loudly, touch nothing. */
    static void cb_abort(const char *what) {
        fprintf(stderr, "engine._cbook: broken invariant: %s\\n", what);
        fflush(stderr);
        abort();
    }

    static PyObject *cb_i128_to_py(cb_i128 v) {
        PyObject *hi, *lo, *shift, *tmp, *res;
        if (v >= (cb_i128)INT64_MIN && v <= (cb_i128)INT64_MAX)
            return PyLong_FromLongLong((long long)v);
        hi = PyLong_FromLongLong((long long)(v >> 64));
        lo = PyLong_FromUnsignedLongLong((unsigned long long)v);
        shift = PyLong_FromLong(64);
        tmp = res = NULL;
        if (hi && lo && shift) {
            tmp = PyNumber_Lshift(hi, shift);
            if (tmp) res = PyNumber_Add(tmp, lo);
        }
        Py_XDECREF(hi); Py_XDECREF(lo); Py_XDECREF(shift); Py_XDECREF(tmp);
        return res;
    }
    """
    ctypedef long long i128 "cb_i128"
    bint cb_mul_overflows(int64_t a, int64_t b, int64_t *res) nogil
    object cb_i128_to_py(i128 v)
    void cb_abort(const char *what) nogil
    const int32_t NIL "CB_NIL"
    const int64_t FEE_BASE "CB_FEE_BASE"
    const int64_t FEE_WHOLE_FAST "CB_FEE_WHOLE_FAST"
    const int32_t SLOTS_MAX "CB_SLOTS_MAX"


# The book's constants are engine.book's (re-exported here under the same
# names); C_X is X as a C integer for the loops below.
from engine.book import (BUY, FILL, MAKER_CANCELLED, MAKER_DECREMENTED, NO_BUDGET, SELL,
                         STP_CANCEL_BOTH, STP_CANCEL_NEWEST, STP_CANCEL_OLDEST, STP_DECREMENT,
                         TAKER_CANCELLED)

cdef int64_t C_BUY = BUY
cdef int64_t C_SELL = SELL
cdef int64_t C_STP_CANCEL_NEWEST = STP_CANCEL_NEWEST
cdef int64_t C_STP_CANCEL_OLDEST = STP_CANCEL_OLDEST
cdef int64_t C_STP_CANCEL_BOTH = STP_CANCEL_BOTH
cdef int64_t C_STP_DECREMENT = STP_DECREMENT
cdef int32_t C_FILL = FILL
cdef int32_t C_MAKER_CANCELLED = MAKER_CANCELLED
cdef int32_t C_MAKER_DECREMENTED = MAKER_DECREMENTED
cdef int32_t C_TAKER_CANCELLED = TAKER_CANCELLED
cdef int64_t C_NO_BUDGET = NO_BUDGET

# The kernel's own layout: the book of (instrument, half) is
# self.sides[2 * instrument + half], half BIDS or ASKS.  Sides taken and
# returned through the API are engine.book's BUY / SELL, mapped at the edge.
cdef enum:
    BIDS = 0
    ASKS = 1


cdef inline int64_t _half(int64_t side) noexcept:
    """Where an API side rests: any side but BUY is SELL, as in the reference."""
    return BIDS if side == C_BUY else ASKS

# The id window (docs/kernel.md, "Index"): an id at most WIN_GAP past its end extends
# it; an insert that finds it longer than max(WIN_MIN, 4 * (resting orders + 1))
# ids moves its oldest ids to the hash (a few per insert), and so does, by
# WIN_DRAIN, an insert of an id far from it (which goes to the hash).
cdef enum:
    WIN_MIN = 4096
    WIN_GAP = 4096
    WIN_DRAIN = 64


cdef struct Order:
    int64_t order_id
    int64_t account
    int64_t qty              # open lots, > 0
    int64_t fee_whole        # fee_numer // 10000
    int32_t prev             # neighbours in the level's FIFO (slots), NIL at the ends
    int32_t next             # for a free slot: the next free slot
    int32_t level            # the level's slot; NIL marks a free order slot
    int32_t flags
    int32_t fee_frac         # fee_numer % 10000, 0..9999


cdef struct Level:
    i128 qty                 # sum of the open lots of its orders
    int64_t price            # ticks
    int32_t head             # oldest order (next to trade); for a free level: next free
    int32_t tail             # newest order
    int32_t count            # number of orders
    int32_t side             # 2 * instrument + BIDS/ASKS; NIL marks a free level slot


cdef struct Side:
    int64_t *keys            # price (bids) or -price (asks), ascending: best at the end
    int32_t *levels          # level slots, parallel to keys
    int32_t n                # entries, emptied levels included
    int32_t cap
    int32_t empty            # entries whose level has no order (never the last one)


cdef struct Bucket:          # one entry of the id index: key and value share a cache line
    int64_t key              # order id
    int32_t slot             # order slot; NIL = empty bucket


cdef struct Rec:             # one match record, turned into a tuple after the loop
    int64_t order_id
    int64_t account
    int64_t price
    int64_t qty
    int64_t remaining
    int64_t fee_whole
    int32_t fee_frac
    int32_t flags
    int32_t kind


cdef inline object _fee_to_py(int64_t whole, int32_t frac):
    if -FEE_WHOLE_FAST <= whole <= FEE_WHOLE_FAST:
        return whole * FEE_BASE + frac
    return (<object>whole) * FEE_BASE + frac


cdef int _fee_split(object numer, int64_t *whole, int32_t *frac) except -1:
    """fee_numer -> (numer // 10000, numer % 10000), floor semantics like Python."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(numer, &overflow)
    cdef long long q, r
    if overflow:
        w, f = divmod(numer, FEE_BASE)
        whole[0] = w            # OverflowError if the whole part does not fit int64
        frac[0] = f
        return 0
    q = v // FEE_BASE
    r = v % FEE_BASE
    if r < 0:                   # C truncates; Python floors
        r += FEE_BASE
        q -= 1
    whole[0] = q
    frac[0] = <int32_t>r
    return 0


cdef inline int64_t _i64(object v) except? -1:
    """An exact int as int64: TypeError for anything but an int (a float is
    never silently truncated), OverflowError past int64."""
    if not PyLong_Check(v):
        raise TypeError(f"an int is required, not {type(v).__name__}")
    return <int64_t>v           # Cython's inline conversion (fast for small ints)


cdef int _as_id(object order_id, int64_t *out) except -1:
    """A Python int as an int64 order id; 0 when it cannot be one (too large,
    not an int), which for lookups means "not in the book"."""
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(order_id):
        return 0
    v = PyLong_AsLongLongAndOverflow(order_id, &overflow)
    if overflow:
        return 0
    out[0] = v
    return 1


cdef inline int32_t _lower_bound(Side *sd, int64_t key) noexcept:
    """First position whose key is >= key (sd.n if none)."""
    cdef int32_t lo = 0, hi = sd.n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if sd.keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cython.final
cdef class Book:
    """All instruments' price-level books; an ``engine.book_protocol.OrderBook``."""

    implementation = "cython"

    cdef Order *orders
    cdef int32_t orders_cap
    cdef int32_t orders_used      # slots ever handed out (high-water mark)
    cdef int32_t orders_free      # head of the free-slot chain
    cdef int32_t n_orders         # resting orders

    cdef Level *lvls
    cdef int32_t lvls_cap
    cdef int32_t lvls_used
    cdef int32_t lvls_free
    cdef int32_t n_levels

    cdef Side *sides              # [2 * instrument + BIDS/ASKS]
    cdef int32_t n_instruments

    cdef Bucket *htab             # the id index (Robin Hood, open addressing)
    cdef int64_t hcap             # power of two
    cdef uint64_t hmask
    cdef int hbits                # log2(hcap)
    cdef int64_t n_hashed         # ids in htab
    cdef int64_t hash_lo, hash_hi  # no id in htab lies outside (valid while n_hashed > 0)

    cdef int32_t *win             # the id window, circular: the slot of id win_base + i
    cdef int64_t win_base         # is win[(win_off + i) & win_mask], or NIL
    cdef int64_t win_len          # ids win_base .. win_base + win_len - 1
    cdef int64_t win_off
    cdef int64_t win_cap          # entries allocated, a power of two
    cdef uint64_t win_mask
    cdef int64_t n_win            # ids in the window (entries that are not NIL)

    cdef Rec *recs                # match records, reused across calls
    cdef Py_ssize_t recs_cap

    def __cinit__(self, Py_ssize_t n_instruments):
        cdef Py_ssize_t i
        if n_instruments < 0:
            n_instruments = 0       # like the reference (no books)
        if n_instruments > 1000000:
            raise ValueError("n_instruments too large")
        self.sides = <Side *>malloc(max(1, 2 * n_instruments) * sizeof(Side))
        if self.sides == NULL:
            raise MemoryError()
        for i in range(2 * n_instruments):
            self.sides[i].keys = NULL
            self.sides[i].levels = NULL
            self.sides[i].n = 0
            self.sides[i].cap = 0
            self.sides[i].empty = 0
        self.n_instruments = <int32_t>n_instruments     # __dealloc__ may free them now
        self.orders_cap = 1024
        self.orders = <Order *>malloc(self.orders_cap * sizeof(Order))
        self.lvls_cap = 64
        self.lvls = <Level *>malloc(self.lvls_cap * sizeof(Level))
        self.hcap = 2048
        self.htab = <Bucket *>malloc(self.hcap * sizeof(Bucket))
        self.win_cap = WIN_MIN
        self.win = <int32_t *>malloc(self.win_cap * sizeof(int32_t))
        self.recs_cap = 64
        self.recs = <Rec *>malloc(self.recs_cap * sizeof(Rec))
        if (self.sides == NULL or self.orders == NULL or self.lvls == NULL
                or self.htab == NULL or self.win == NULL or self.recs == NULL):
            raise MemoryError()
        self.orders_used = 0
        self.orders_free = NIL
        self.n_orders = 0
        self.lvls_used = 0
        self.lvls_free = NIL
        self.n_levels = 0
        self.hmask = <uint64_t>(self.hcap - 1)
        self.hbits = 11
        for i in range(self.hcap):
            self.htab[i].slot = NIL
        self.n_hashed = 0
        self.win_base = 0
        self.win_len = 0
        self.win_off = 0
        self.win_mask = <uint64_t>(self.win_cap - 1)
        self.n_win = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.sides != NULL:
            for i in range(2 * self.n_instruments):
                free(self.sides[i].keys)
                free(self.sides[i].levels)
            free(self.sides)
        free(self.orders)
        free(self.lvls)
        free(self.htab)
        free(self.win)
        free(self.recs)

    # ============================================================ hash index
    # Robin Hood linear probing: along a run, entries sit in order of their home
    # bucket, so a miss stops as soon as it meets an entry closer to its home
    # than the probe is, and a delete shifts back only the displaced entries
    # after the hole.
    cdef inline uint64_t _home(self, int64_t key) noexcept:
        # Blocks of 4 consecutive ids (one 64-byte line of 16-byte buckets)
        # stay together -- the engine assigns ids in sequence, so recent orders
        # share cache lines -- and the blocks are scattered by splitmix64's
        # finalizer, so runs stay short at load <= 1/2 whatever the ids.
        # (Keeping *all* consecutive ids in consecutive buckets made one long
        # run of the newest orders; with Robin Hood every insert homing inside
        # it then swapped to its end.)
        cdef uint64_t z = (<uint64_t>key) >> 2
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
        z = z ^ (z >> 31)
        return ((z << 2) | ((<uint64_t>key) & 3)) & self.hmask

    cdef inline uint64_t _dist(self, uint64_t i) noexcept:
        """How far the entry in bucket i sits from its home."""
        return (i - self._home(self.htab[i].key)) & self.hmask

    cdef inline int64_t _bucket(self, int64_t key) noexcept:
        """The bucket holding key, or -1."""
        cdef uint64_t i = self._home(key)
        cdef uint64_t d = 0
        while True:
            if self.htab[i].slot == NIL:
                return -1
            if self.htab[i].key == key:
                return <int64_t>i
            if self._dist(i) < d:       # key would sit before this entry
                return -1
            i = (i + 1) & self.hmask
            d += 1

    cdef inline int32_t _hfind(self, int64_t key) noexcept:
        cdef int64_t b = self._bucket(key)
        return NIL if b < 0 else self.htab[b].slot

    cdef inline void _hinsert(self, int64_t key, int32_t slot) noexcept:
        # the caller made room (_reserve_index) and checked key is absent
        cdef uint64_t i = self._home(key)
        cdef uint64_t d = 0, di
        cdef int64_t k2
        cdef int32_t v2
        while self.htab[i].slot != NIL:
            di = self._dist(i)
            if di < d:                  # take the place of the less displaced entry
                k2, v2 = self.htab[i].key, self.htab[i].slot
                self.htab[i].key, self.htab[i].slot = key, slot
                key, slot, d = k2, v2, di
            i = (i + 1) & self.hmask
            d += 1
        self.htab[i].key = key
        self.htab[i].slot = slot

    cdef void _herase(self, int64_t key) noexcept:
        """Delete key (present) and shift the displaced entries after it back."""
        cdef int64_t b = self._bucket(key)
        cdef uint64_t i, j
        if b < 0:
            cb_abort("erasing an id that is not in the index")
        i = <uint64_t>b
        j = (i + 1) & self.hmask
        while self.htab[j].slot != NIL and self._dist(j) != 0:
            self.htab[i] = self.htab[j]
            i = j
            j = (j + 1) & self.hmask
        self.htab[i].slot = NIL

    cdef int _reserve_index(self, int64_t more) except -1:
        """Room for ``more`` ids in the hash at load <= 1/2: grow (by powers of
        two) and rehash when needed."""
        cdef int64_t new_cap = self.hcap, i
        cdef int new_bits = self.hbits
        cdef Bucket *new_tab
        cdef Bucket *old_tab = self.htab
        cdef int64_t old_cap = self.hcap
        while 2 * (self.n_hashed + more) > new_cap:
            new_cap *= 2
            new_bits += 1
        if new_cap == old_cap:
            return 0
        new_tab = <Bucket *>malloc(new_cap * sizeof(Bucket))
        if new_tab == NULL:
            raise MemoryError()
        for i in range(new_cap):
            new_tab[i].slot = NIL
        self.htab, self.hcap = new_tab, new_cap
        self.hmask = <uint64_t>(new_cap - 1)
        self.hbits = new_bits
        for i in range(old_cap):
            if old_tab[i].slot != NIL:
                self._hinsert(old_tab[i].key, old_tab[i].slot)
        free(old_tab)
        return 0

    # ============================================================ id index
    # One mapping in two places: an id is in the window (a plain array over a
    # range of consecutive ids, which is where the engine's ids fall: it hands
    # them out in sequence, so a lookup reads one 4-byte entry of a dense
    # array instead of a bucket of a table twice the size of the book) or in
    # the hash, never in both (an insert checks the id is absent).
    cdef inline int32_t _find(self, int64_t key) noexcept:
        cdef uint64_t d = <uint64_t>key - <uint64_t>self.win_base
        cdef int32_t slot
        if d < <uint64_t>self.win_len:
            slot = self._wentry(<int64_t>d)[0]
            if slot != NIL:
                return slot
        if self.n_hashed == 0 or key < self.hash_lo or key > self.hash_hi:
            return NIL
        return self._hfind(key)

    cdef inline int32_t *_wentry(self, int64_t i) noexcept:
        """The window's entry for id win_base + i (0 <= i < win_cap)."""
        return &self.win[(<uint64_t>self.win_off + <uint64_t>i) & self.win_mask]

    cdef int _index_reserve(self, int64_t key) except -1:
        """Room to insert ``key`` (absent): afterwards ``_index_put(key)``
        cannot fail.  May extend the window, or move its oldest ids to the
        hash: the mapping stays the same.  Bounded work per call: at most
        WIN_GAP new entries and WIN_GAP + 8 moved ones, except to grow its
        array (as a hash grows)."""
        cdef uint64_t d
        cdef int64_t new_len, limit, cut, i, new_cap
        cdef int32_t *p
        if self.n_win == 0:             # an empty window starts again at this id
            self.win_base = key
            self.win_len = 0
        d = <uint64_t>key - <uint64_t>self.win_base
        if d < <uint64_t>self.win_len:
            return 0
        if d >= <uint64_t>self.win_len + WIN_GAP:
            # far from the window, behind it or ahead of it: the hash.  And the
            # window's oldest WIN_DRAIN entries drain to the hash too, so that a
            # window the ids have left (the engine's ids after a run of more than
            # WIN_GAP orders that did not rest) empties a little at a time and
            # starts again where they are now
            return self._win_shed(min(<int64_t>WIN_DRAIN, self.win_len), 1)
        new_len = <int64_t>d + 1
        limit = max(<int64_t>WIN_MIN, 4 * (<int64_t>self.n_orders + 1))
        if new_len > limit:
            # over its bound: the oldest ids move to the hash, no more than the
            # window grows by now plus 8 (so it shrinks back a little at a time)
            cut = min(new_len - limit, new_len - self.win_len + 8, self.win_len)
            self._win_shed(cut, 0)
            new_len -= cut
        if new_len > self.win_cap:
            new_cap = self.win_cap
            while new_cap < new_len:
                new_cap *= 2
            if self.win_off + self.win_len <= self.win_cap:
                # not wrapped (as while it first grows): realloc, which may
                # move the pages of a large block instead of copying them
                p = <int32_t *>realloc(self.win, new_cap * sizeof(int32_t))
                if p == NULL:
                    raise MemoryError()
            else:
                p = <int32_t *>malloc(new_cap * sizeof(int32_t))
                if p == NULL:
                    raise MemoryError()
                for i in range(self.win_len):       # unwrapped into the new array
                    p[i] = self._wentry(i)[0]
                free(self.win)
                self.win_off = 0
            self.win, self.win_cap = p, new_cap
            self.win_mask = <uint64_t>(new_cap - 1)
        for i in range(self.win_len, new_len):
            self._wentry(i)[0] = NIL
        self.win_len = new_len
        return 0

    cdef int _win_shed(self, int64_t cut, int64_t more) except -1:
        """Move the window's oldest ``cut`` ids to the hash (the window starts
        after them), with room left in the hash for ``more`` ids besides; the
        room is made first, so a MemoryError leaves both as they were."""
        cdef int64_t i, moving = 0
        cdef int32_t slot
        for i in range(cut):
            if self._wentry(i)[0] != NIL:
                moving += 1
        self._reserve_index(moving + more)
        for i in range(cut):
            slot = self._wentry(i)[0]
            if slot != NIL:
                self._hput(<int64_t>(<uint64_t>self.win_base + <uint64_t>i), slot)
        self.win_base = <int64_t>(<uint64_t>self.win_base + <uint64_t>cut)
        self.win_off = (self.win_off + cut) & <int64_t>self.win_mask
        self.win_len -= cut
        self.n_win -= moving
        return 0

    cdef inline void _index_put(self, int64_t key, int32_t slot) noexcept:
        """Insert ``key`` (absent, and _index_reserve made room for it, or it
        just left the index: move)."""
        cdef uint64_t d = <uint64_t>key - <uint64_t>self.win_base
        if d < <uint64_t>self.win_len:
            self._wentry(<int64_t>d)[0] = slot
            self.n_win += 1
        else:
            self._hput(key, slot)

    cdef inline void _hput(self, int64_t key, int32_t slot) noexcept:
        if self.n_hashed == 0:
            self.hash_lo = self.hash_hi = key
        elif key < self.hash_lo:
            self.hash_lo = key
        elif key > self.hash_hi:
            self.hash_hi = key
        self._hinsert(key, slot)
        self.n_hashed += 1

    cdef inline void _index_erase(self, int64_t key) noexcept:
        """Delete ``key`` (present)."""
        cdef uint64_t d = <uint64_t>key - <uint64_t>self.win_base
        cdef int32_t *e
        if d < <uint64_t>self.win_len:
            e = self._wentry(<int64_t>d)
            if e[0] != NIL:
                e[0] = NIL
                self.n_win -= 1
                return
        self._herase(key)
        self.n_hashed -= 1

    # ============================================================ pools
    cdef int _reserve_order(self) except -1:
        cdef int64_t new_cap
        cdef Order *p
        if self.orders_free != NIL or self.orders_used < self.orders_cap:
            return 0
        if self.orders_cap >= SLOTS_MAX:
            raise MemoryError("order pool full")
        new_cap = min(<int64_t>SLOTS_MAX, 2 * <int64_t>self.orders_cap)
        p = <Order *>realloc(self.orders, new_cap * sizeof(Order))
        if p == NULL:
            raise MemoryError()
        self.orders, self.orders_cap = p, <int32_t>new_cap
        return 0

    cdef inline int32_t _take_order(self) noexcept:
        cdef int32_t slot = self.orders_free
        if slot != NIL:
            self.orders_free = self.orders[slot].next
            return slot
        slot = self.orders_used
        self.orders_used += 1
        return slot

    cdef inline void _free_order(self, int32_t slot) noexcept:
        self.orders[slot].level = NIL
        self.orders[slot].next = self.orders_free
        self.orders_free = slot
        self.n_orders -= 1

    cdef int _reserve_level(self, Side *sd) except -1:
        """Room for one more level in the pool and in the side's array."""
        cdef int64_t new_cap
        cdef Level *p
        cdef int64_t *k
        cdef int32_t *v
        if self.lvls_free == NIL and self.lvls_used >= self.lvls_cap:
            if self.lvls_cap >= SLOTS_MAX:
                raise MemoryError("level pool full")
            new_cap = min(<int64_t>SLOTS_MAX, 2 * <int64_t>self.lvls_cap)
            p = <Level *>realloc(self.lvls, new_cap * sizeof(Level))
            if p == NULL:
                raise MemoryError()
            self.lvls, self.lvls_cap = p, <int32_t>new_cap
        if sd.n >= sd.cap:
            if sd.cap >= SLOTS_MAX:
                raise MemoryError("side full")
            new_cap = min(<int64_t>SLOTS_MAX, max(8, 2 * <int64_t>sd.cap))
            k = <int64_t *>realloc(sd.keys, new_cap * sizeof(int64_t))
            if k == NULL:
                raise MemoryError()
            sd.keys = k             # larger than cap is harmless if the next one fails
            v = <int32_t *>realloc(sd.levels, new_cap * sizeof(int32_t))
            if v == NULL:
                raise MemoryError()
            sd.levels = v
            sd.cap = <int32_t>new_cap
        return 0

    cdef inline void _free_level(self, int32_t li) noexcept:
        self.lvls[li].side = NIL
        self.lvls[li].head = self.lvls_free
        self.lvls_free = li
        self.n_levels -= 1

    # ============================================================ sides
    cdef inline Side *_side(self, int64_t instrument, int64_t half) except NULL:
        """The book of (instrument, BIDS or ASKS); IndexError for an unknown instrument."""
        if instrument < 0 or instrument >= self.n_instruments:
            raise IndexError(f"instrument {instrument} out of range")
        return &self.sides[2 * instrument + half]

    cdef void _level_emptied(self, Side *sd, int32_t li) noexcept:
        """A level lost its last order.  The best level leaves the array at once
        (and any emptied levels then at the end with it), so the last entry is
        always a live level.  One deeper in the book stays as an empty entry,
        ready for the next order at that price, and costs no memmove now; the
        array is compacted when empty entries outnumber live ones."""
        if sd.levels[sd.n - 1] == li:
            sd.n -= 1
            self._free_level(li)
            while sd.n > 0 and self.lvls[sd.levels[sd.n - 1]].count == 0:
                sd.n -= 1
                sd.empty -= 1
                self._free_level(sd.levels[sd.n])
        else:
            sd.empty += 1
        # (also after the best level left: the live entries are fewer now)
        if sd.empty > 32 and 2 * sd.empty > sd.n:
            self._compact(sd)

    cdef void _compact(self, Side *sd) noexcept:
        """Drop every empty entry (amortized O(1) per emptied level)."""
        cdef int32_t i, w = 0, li
        for i in range(sd.n):
            li = sd.levels[i]
            if self.lvls[li].count:
                sd.keys[w] = sd.keys[i]
                sd.levels[w] = li
                w += 1
            else:
                self._free_level(li)
        sd.n = w
        sd.empty = 0

    cdef void _unlink(self, int32_t slot) noexcept:
        """Take a resting order out of its level (dropping an emptied level),
        out of the index, and back to the free pool."""
        cdef Order *o = &self.orders[slot]
        cdef int32_t li = o.level
        cdef Level *lv = &self.lvls[li]
        if o.prev != NIL:
            self.orders[o.prev].next = o.next
        else:
            lv.head = o.next
        if o.next != NIL:
            self.orders[o.next].prev = o.prev
        else:
            lv.tail = o.prev
        lv.qty -= o.qty
        lv.count -= 1
        self._index_erase(o.order_id)
        self._free_order(slot)
        if lv.count == 0:
            self._level_emptied(&self.sides[lv.side], li)

    # ============================================================ queries
    def __len__(self):
        return self.n_orders

    def get(self, order_id):
        """(instrument, account, side, price, qty, fee_numer, flags) or None."""
        cdef int64_t oid
        cdef int32_t slot
        if not _as_id(order_id, &oid):
            return None
        slot = self._find(oid)
        if slot == NIL:
            return None
        return self._record(slot)

    cdef tuple _record(self, int32_t slot):
        cdef Order *o = &self.orders[slot]
        cdef Level *lv = &self.lvls[o.level]
        cdef int64_t side = C_BUY if (lv.side & 1) == BIDS else C_SELL
        return (lv.side >> 1, o.account, side, lv.price, o.qty,
                _fee_to_py(o.fee_whole, o.fee_frac), o.flags)

    def best_bid(self, instrument):
        cdef Side *sd = self._side(_i64(instrument), BIDS)
        return sd.keys[sd.n - 1] if sd.n else 0

    def best_ask(self, instrument):
        cdef Side *sd = self._side(_i64(instrument), ASKS)
        return -sd.keys[sd.n - 1] if sd.n else 0

    def crosses(self, instrument_, side_, price_):
        """Would an order at ``price`` trade on arrival?"""
        cdef int64_t instrument = _i64(instrument_), side = _i64(side_), price = _i64(price_)
        self._side(instrument, BIDS)           # checks the instrument
        return self._crossing(2 * instrument + _half(side), price)

    def depth(self, instrument_, levels):
        """([(price, qty)...] bids best first, [(price, qty)...] asks best first)."""
        cdef int64_t instrument = _i64(instrument_)
        cdef Side *bids = self._side(instrument, BIDS)
        cdef Side *asks = self._side(instrument, ASKS)
        return self._levels(bids, levels), self._levels(asks, levels)

    cdef list _levels(self, Side *sd, object levels):
        cdef int32_t k, i
        cdef Level *lv
        cdef list out = []
        if not PyLong_Check(levels):
            raise TypeError(f"levels must be an int, not {type(levels).__name__}")
        if levels <= 0:
            return out
        k = sd.n if levels >= sd.n else <int32_t>levels
        i = sd.n - 1
        while k > 0 and i >= 0:
            lv = &self.lvls[sd.levels[i]]
            i -= 1
            if lv.count:                # emptied levels are skipped
                out.append((lv.price, cb_i128_to_py(lv.qty)))
                k -= 1
        return out

    def dump(self, instrument_):
        """Every resting order of an instrument in priority order (bids best
        first, then asks best first; FIFO inside a level) as
        (order_id, account, side, price, qty, fee_numer, flags)."""
        cdef int64_t instrument = _i64(instrument_)
        cdef list out = []
        self._dump_side(self._side(instrument, BIDS), C_BUY, out)
        self._dump_side(self._side(instrument, ASKS), C_SELL, out)
        return out

    cdef void _dump_side(self, Side *sd, int64_t side, list out) except *:
        cdef int32_t i, slot
        cdef Level *lv
        cdef Order *o
        for i in range(sd.n - 1, -1, -1):
            lv = &self.lvls[sd.levels[i]]
            slot = lv.head
            while slot != NIL:
                o = &self.orders[slot]
                out.append((o.order_id, o.account, side, lv.price, o.qty,
                            _fee_to_py(o.fee_whole, o.fee_frac), o.flags))
                slot = o.next

    # ============================================================ updates
    def add(self, instrument_, order_id_, account_, side_, price_, qty_, fee_numer, flags_):
        """Rest an order at the back of its price level."""
        self._add(instrument_, order_id_, account_, side_, price_, qty_, fee_numer, flags_, False)

    def rest(self, instrument_, order_id_, account_, side_, price_, qty_, fee_numer, flags_):
        """``add`` unless an order at ``price`` would trade on arrival: True when
        it rests, False (the book unchanged) when it crosses."""
        return self._add(instrument_, order_id_, account_, side_, price_, qty_, fee_numer,
                         flags_, True)

    cdef bint _add(self, instrument_, order_id_, account_, side_, price_, qty_, fee_numer, flags_,
                   bint unless_crossing) except -1:
        """add(), or rest() with ``unless_crossing``: False when it crossed."""
        cdef int64_t instrument = _i64(instrument_), side = _i64(side_), price = _i64(price_)
        cdef int64_t order_id, account, qty, flags64, fee_whole
        cdef int32_t fee_frac
        if unless_crossing:     # first, as the reference's crosses() then add()
            self._side(instrument, BIDS)       # checks the instrument
            if self._crossing(2 * instrument + _half(side), price):
                return False
        order_id, account, qty, flags64 = _i64(order_id_), _i64(account_), _i64(qty_), _i64(flags_)
        if side != C_BUY and side != C_SELL:
            raise IndexError(f"side must be BUY ({BUY}) or SELL ({SELL}), not {side}")
        if not (-2147483648 <= flags64 <= 2147483647):
            raise OverflowError(f"flags must fit int32: {flags64}")
        self._side(instrument, BIDS)           # checks the instrument
        if self._find(order_id) != NIL:
            raise AssertionError(order_id)
        if qty <= 0:
            raise AssertionError(qty)
        if price <= 0:
            raise AssertionError(price)
        _fee_split(fee_numer, &fee_whole, &fee_frac)
        # every allocation first: a MemoryError leaves the book as it was
        self._reserve_order()
        self._index_reserve(order_id)
        self._link(instrument, order_id, account, _half(side), price, qty, fee_whole, fee_frac,
                   <int32_t>flags64)
        return True

    cdef inline bint _crossing(self, int32_t sidx, int64_t price) noexcept:
        """Would an order on side ``sidx`` (2 * instrument + BIDS/ASKS) at ``price`` trade?"""
        cdef Side *opp = &self.sides[sidx ^ 1]
        if opp.n == 0:
            return False
        if (sidx & 1) == ASKS:      # a sell meets the bids (keys are prices)
            return opp.keys[opp.n - 1] >= price
        return -opp.keys[opp.n - 1] <= price      # a buy meets the asks (keys are -prices)

    def move(self, order_id, price_, qty_):
        """Re-queue a resting order at ``price`` with ``qty`` open lots, behind
        the orders already there (it loses its time priority), unless an order
        at ``price`` would trade on arrival: then it is only taken off the book.
        True when it rests at its new place, False when it was taken off (the
        caller matches it).  KeyError for an id that is not resting."""
        cdef int32_t slot = self._slot_or_keyerror(order_id)
        cdef int64_t qty = _i64(qty_), price
        cdef Order *o = &self.orders[slot]
        cdef int32_t sidx = self.lvls[o.level].side
        cdef int64_t instrument = sidx >> 1, half = sidx & 1
        cdef int64_t oid = o.order_id, account = o.account, fee_whole = o.fee_whole
        cdef int32_t fee_frac = o.fee_frac, flags = o.flags
        if qty <= 0:            # checked in the reference's order
            raise AssertionError(qty)
        price = _i64(price_)
        if price <= 0:
            raise AssertionError(price)
        # room for a new level first; the slot and the index entry _unlink frees
        # are the ones _link takes back: nothing can fail once the order is out
        self._reserve_level(&self.sides[sidx])
        self._unlink(slot)
        if self._crossing(sidx, price):
            return False
        self._link(instrument, oid, account, half, price, qty, fee_whole, fee_frac, flags)
        return True

    cdef int _link(self, int64_t instrument, int64_t order_id, int64_t account, int64_t half,
                   int64_t price, int64_t qty, int64_t fee_whole, int32_t fee_frac,
                   int32_t flags) except -1:
        """Append a validated order to the back of its level (creating the level);
        the caller has reserved an order slot and an index entry."""
        cdef Side *sd = &self.sides[2 * instrument + half]
        cdef int64_t key
        cdef int32_t pos, li, slot
        cdef Level *lv
        cdef Order *o
        key = price if half == BIDS else -price
        if sd.n and sd.keys[sd.n - 1] == key:
            li = sd.levels[sd.n - 1]
        else:
            pos = _lower_bound(sd, key)
            if pos < sd.n and sd.keys[pos] == key:
                li = sd.levels[pos]
                if self.lvls[li].count == 0:     # an emptied level comes back
                    sd.empty -= 1
            else:
                self._reserve_level(sd)
                li = self.lvls_free
                if li != NIL:
                    self.lvls_free = self.lvls[li].head
                else:
                    li = self.lvls_used
                    self.lvls_used += 1
                self.n_levels += 1
                lv = &self.lvls[li]
                lv.qty = 0
                lv.price = price
                lv.head = NIL
                lv.tail = NIL
                lv.count = 0
                lv.side = <int32_t>(2 * instrument + half)
                memmove(&sd.keys[pos + 1], &sd.keys[pos], (sd.n - pos) * sizeof(int64_t))
                memmove(&sd.levels[pos + 1], &sd.levels[pos], (sd.n - pos) * sizeof(int32_t))
                sd.keys[pos] = key
                sd.levels[pos] = li
                sd.n += 1
        lv = &self.lvls[li]
        slot = self._take_order()
        o = &self.orders[slot]
        o.order_id = order_id
        o.account = account
        o.qty = qty
        o.fee_whole = fee_whole
        o.fee_frac = fee_frac
        o.flags = flags
        o.level = li
        o.next = NIL
        o.prev = lv.tail
        if lv.tail != NIL:
            self.orders[lv.tail].next = slot
        else:
            lv.head = slot
        lv.tail = slot
        lv.qty += qty
        lv.count += 1
        self.n_orders += 1
        self._index_put(order_id, slot)
        return 0

    def remove(self, order_id):
        """Take an order off the book; returns its record (see ``get``) or None."""
        cdef int64_t oid
        cdef int32_t slot
        cdef tuple rec
        if not _as_id(order_id, &oid):
            return None
        slot = self._find(oid)
        if slot == NIL:
            return None
        rec = self._record(slot)
        self._unlink(slot)
        return rec

    cdef int32_t _slot_or_keyerror(self, object order_id) except NIL:
        cdef int64_t oid
        cdef int32_t slot = NIL
        if _as_id(order_id, &oid):
            slot = self._find(oid)
        if slot == NIL:
            raise KeyError(order_id)
        return slot

    def reduce(self, order_id, qty_):
        """Lower an order's open quantity in place, keeping its time priority."""
        cdef int32_t slot = self._slot_or_keyerror(order_id)
        cdef int64_t qty = _i64(qty_)
        cdef Order *o = &self.orders[slot]
        if not (0 < qty <= o.qty):
            raise AssertionError((qty, o.qty))
        self.lvls[o.level].qty -= o.qty - qty
        o.qty = qty

    def set_fee(self, order_id, fee_numer):
        cdef int32_t slot = self._slot_or_keyerror(order_id)
        cdef int64_t whole
        cdef int32_t frac
        _fee_split(fee_numer, &whole, &frac)
        self.orders[slot].fee_whole = whole
        self.orders[slot].fee_frac = frac

    # ============================================================ matching
    cdef inline Rec *_rec(self, Py_ssize_t n) except NULL:
        cdef Rec *p
        cdef Py_ssize_t new_cap
        if n >= self.recs_cap:
            new_cap = 2 * self.recs_cap
            p = <Rec *>realloc(self.recs, new_cap * sizeof(Rec))
            if p == NULL:
                raise MemoryError()
            self.recs, self.recs_cap = p, new_cap
        return &self.recs[n]

    cdef inline void _put(self, Rec *r, int kind, Order *o, int64_t price, int64_t qty,
                          int64_t remaining) noexcept:
        r.kind = kind
        r.order_id = o.order_id
        r.account = o.account
        r.price = price
        r.qty = qty
        r.remaining = remaining
        r.fee_whole = o.fee_whole
        r.fee_frac = o.fee_frac
        r.flags = o.flags

    cdef bint _pop_head(self, Side *sd, int32_t li) noexcept:
        """Remove the oldest order of the side's best level (the match loop's
        maker); True when that emptied and dropped the level."""
        cdef Level *lv = &self.lvls[li]
        cdef int32_t slot = lv.head
        cdef Order *o = &self.orders[slot]
        lv.head = o.next
        if o.next != NIL:
            self.orders[o.next].prev = NIL
        else:
            lv.tail = NIL
        lv.qty -= o.qty
        lv.count -= 1
        self._index_erase(o.order_id)
        self._free_order(slot)
        if lv.count == 0:
            self._level_emptied(sd, li)     # the best level: leaves at once
            return True
        return False

    cdef Py_ssize_t _match(self, Side *sd, bint taker_buys, int64_t limit, int64_t qty,
                           int64_t budget, int64_t unit, int64_t account, int64_t stp) except -1:
        """The matching loop: fills go to self.recs; returns how many."""
        cdef Py_ssize_t n = 0
        cdef int32_t li
        cdef Level *lv
        cdef Order *o
        cdef int64_t price, lot_cost = 0, fill, left, affordable
        cdef bint cost_overflows = False, has_budget = budget != C_NO_BUDGET
        while qty > 0 and sd.n > 0:
            li = sd.levels[sd.n - 1]
            lv = &self.lvls[li]
            price = lv.price
            if (price > limit) if taker_buys else (price < limit):
                break
            if has_budget:
                # lot_cost > int64 max > budget: not even one lot is affordable
                cost_overflows = cb_mul_overflows(price, unit, &lot_cost)
            while qty > 0:
                o = &self.orders[lv.head]
                if o.account == account:
                    if stp == C_STP_CANCEL_NEWEST:
                        self._put(self._rec(n), C_TAKER_CANCELLED, o, price, 0, o.qty)
                        return n + 1
                    if stp == C_STP_DECREMENT:
                        fill = qty if qty < o.qty else o.qty
                        qty -= fill
                        left = o.qty - fill
                        self._put(self._rec(n), C_MAKER_DECREMENTED, o, price, fill, left)
                        n += 1
                        if left:
                            o.qty = left
                            lv.qty -= fill
                        elif self._pop_head(sd, li):
                            break
                        continue
                    # cancel_oldest (or an unknown mode) / cancel_both: the resting order goes
                    self._put(self._rec(n), C_MAKER_CANCELLED, o, price, o.qty, 0)
                    n += 1
                    if stp == C_STP_CANCEL_BOTH:
                        self._put(self._rec(n), C_TAKER_CANCELLED, o, price, 0, 0)
                        n += 1
                        self._pop_head(sd, li)
                        return n
                    if self._pop_head(sd, li):
                        break
                    continue
                fill = qty if qty < o.qty else o.qty
                if has_budget:
                    if cost_overflows:
                        return n
                    affordable = budget // lot_cost     # both > 0: C division is floor
                    if affordable == 0:
                        return n
                    if affordable < fill:
                        fill = affordable
                    budget -= fill * lot_cost           # <= budget: no overflow
                qty -= fill
                left = o.qty - fill
                self._put(self._rec(n), C_FILL, o, price, fill, left)
                n += 1
                if left:
                    o.qty = left
                    lv.qty -= fill
                elif self._pop_head(sd, li):
                    break
        return n

    def match(self, instrument_, side_, limit_, qty_, budget_, unit_, account_, stp_):
        """Match an incoming order against the opposite side; the arguments and
        the records: ``engine.book_protocol.OrderBook.match``."""
        cdef int64_t instrument = _i64(instrument_), limit = _i64(limit_), qty = _i64(qty_)
        cdef int64_t budget = _i64(budget_), unit = _i64(unit_), account = _i64(account_)
        cdef int64_t stp = _i64(stp_)      # unknown: acts as cancel_oldest, as in the reference
        cdef bint taker_buys = _i64(side_) == C_BUY
        cdef Side *sd = self._side(instrument, ASKS if taker_buys else BIDS)
        cdef Py_ssize_t n, i
        cdef Rec *r
        cdef list out = []
        if budget != C_NO_BUDGET:
            if budget < 0:
                raise ValueError(f"budget must be >= 0, not {budget}")
            if unit < 1:
                raise ValueError(f"unit must be >= 1 with a budget, not {unit}")
        n = self._match(sd, taker_buys, limit, qty, budget, unit, account, stp)
        for i in range(n):
            r = &self.recs[i]
            out.append((r.kind, r.order_id, r.account, r.price, r.qty, r.remaining,
                        _fee_to_py(r.fee_whole, r.fee_frac), r.flags))
        return out

    def can_fill(self, instrument_, side_, limit_, qty_, account_, stp_):
        """Would ``match`` with these arguments (and no budget) trade all ``qty``?
        Changes nothing.  Own orders met first end the walk, except under
        ``cancel_oldest``, which would remove them and go on."""
        cdef int64_t instrument = _i64(instrument_), limit = _i64(limit_), qty = _i64(qty_)
        cdef int64_t account = _i64(account_), stp = _i64(stp_)
        cdef bint taker_buys = _i64(side_) == C_BUY
        cdef Side *sd = self._side(instrument, ASKS if taker_buys else BIDS)
        cdef int32_t i, slot
        cdef Level *lv
        cdef Order *o
        for i in range(sd.n - 1, -1, -1):
            lv = &self.lvls[sd.levels[i]]
            if lv.count == 0:
                continue
            if (lv.price > limit) if taker_buys else (lv.price < limit):
                return False
            slot = lv.head
            while slot != NIL:
                o = &self.orders[slot]
                slot = o.next
                if o.account == account:
                    if stp == C_STP_CANCEL_OLDEST:
                        continue
                    return False
                if o.qty >= qty:        # qty - o.qty <= 0, without overflow
                    return True
                qty -= o.qty
        return False

    # ============================================================ self-check
    cdef int64_t _max_displacement(self):
        """The farthest any id sits from its home bucket: a bound on the
        probes of a lookup, a miss or a delete."""
        cdef int64_t i, d, worst = 0
        for i in range(self.hcap):
            if self.htab[i].slot != NIL:
                d = <int64_t>self._dist(<uint64_t>i)
                if d > worst:
                    worst = d
        return worst

    def validate(self):
        """Slow walk over every invariant of the structure (tests only)."""
        cdef Py_ssize_t s, i, seen = 0, levels_seen = 0, free_seen = 0, empty
        cdef int32_t li, slot, prev, count
        cdef int64_t key, probe
        cdef i128 total
        cdef Side *sd
        cdef Level *lv
        cdef Order *o
        check(0 <= self.n_orders <= self.orders_used <= self.orders_cap, "order pool counters")
        check(0 <= self.n_levels <= self.lvls_used <= self.lvls_cap, "level pool counters")
        for s in range(2 * self.n_instruments):
            sd = &self.sides[s]
            check(0 <= sd.n <= sd.cap, "side counters")
            check(sd.n == 0 or self.lvls[sd.levels[sd.n - 1]].count > 0, "the best level is empty")
            check(sd.empty <= 32 or 2 * sd.empty <= sd.n, "too many empty levels kept")
            empty = 0
            for i in range(sd.n):
                if i:
                    check(sd.keys[i - 1] < sd.keys[i], "side keys not strictly ascending")
                li = sd.levels[i]
                check(0 <= li < self.lvls_used, "level slot out of range")
                lv = &self.lvls[li]
                check(lv.side == s, "level on the wrong side")
                key = lv.price if (s & 1) == BIDS else -lv.price
                check(key == sd.keys[i], "level key != price")
                check(lv.price > 0, "level price <= 0")
                levels_seen += 1
                if lv.count == 0:
                    check(lv.head == NIL and lv.tail == NIL and lv.qty == 0, "emptied level not empty")
                    empty += 1
                    continue
                check(lv.head != NIL, "level without a head")
                total = 0
                count = 0
                prev = NIL
                slot = lv.head
                while slot != NIL:
                    check(0 <= slot < self.orders_used, "order slot out of range")
                    check(count < lv.count, "level list longer than its count (cycle?)")
                    o = &self.orders[slot]
                    check(o.level == li, "order points at another level")
                    check(o.prev == prev, "broken prev link")
                    check(o.qty > 0, "order qty <= 0")
                    check(0 <= o.fee_frac < FEE_BASE, "fee_frac out of range")
                    check(self._find(o.order_id) == slot, "index does not find the order")
                    total += o.qty
                    count += 1
                    prev = slot
                    slot = o.next
                check(lv.tail == prev, "tail is not the last order")
                check(count == lv.count, "level count")
                check(total == lv.qty, f"level total {cb_i128_to_py(total)} != {cb_i128_to_py(lv.qty)}")
                seen += count
            check(empty == sd.empty, "empty level count")
        for s in range(self.n_instruments):
            if self.sides[2 * s].n and self.sides[2 * s + 1].n:
                check(self.sides[2 * s].keys[self.sides[2 * s].n - 1]
                      < -self.sides[2 * s + 1].keys[self.sides[2 * s + 1].n - 1], "crossed book")
        check(seen == self.n_orders, f"{seen} orders in levels != {self.n_orders}")
        check(levels_seen == self.n_levels, "level count")
        # free chains
        slot = self.orders_free
        while slot != NIL:
            check(0 <= slot < self.orders_used and self.orders[slot].level == NIL, "order free chain")
            free_seen += 1
            check(free_seen <= self.orders_used, "order free chain cycle")
            slot = self.orders[slot].next
        check(free_seen + self.n_orders == self.orders_used, "order slots leaked")
        free_seen = 0
        li = self.lvls_free
        while li != NIL:
            check(0 <= li < self.lvls_used and self.lvls[li].side == NIL, "level free chain")
            free_seen += 1
            check(free_seen <= self.lvls_used, "level free chain cycle")
            li = self.lvls[li].head
        check(free_seen + self.n_levels == self.lvls_used, "level slots leaked")
        # the window: every entry NIL or the slot of a live order with that id
        check(0 <= self.win_len <= self.win_cap and 0 <= self.win_off < self.win_cap
              and self.win_mask == <uint64_t>(self.win_cap - 1)
              and (self.win_cap & (self.win_cap - 1)) == 0, "window geometry")
        check(self.n_win + self.n_hashed == self.n_orders, "index size")
        seen = 0
        for i in range(self.win_len):
            slot = self._wentry(i)[0]
            if slot == NIL:
                continue
            seen += 1
            key = <int64_t>(<uint64_t>self.win_base + <uint64_t>i)
            check(0 <= slot < self.orders_used, "window slot out of range")
            check(self.orders[slot].level != NIL, "window points at a free slot")
            check(self.orders[slot].order_id == key, "window id != order id")
            check(self._bucket(key) < 0, "an id in the window and the hash")
        check(seen == self.n_win, "window size")
        # the hash: every entry a live order, reachable from its home bucket
        check(2 * self.n_hashed <= self.hcap, "index load > 1/2")
        check(self.hmask == <uint64_t>(self.hcap - 1)
              and (<uint64_t>1 << self.hbits) == <uint64_t>self.hcap, "index geometry")
        seen = 0
        for i in range(self.hcap):
            if self.htab[i].slot == NIL:
                continue
            seen += 1
            slot = self.htab[i].slot
            check(0 <= slot < self.orders_used, "index slot out of range")
            check(self.orders[slot].level != NIL, "index points at a free slot")
            check(self.orders[slot].order_id == self.htab[i].key, "index key != order id")
            check(self.hash_lo <= self.htab[i].key <= self.hash_hi, "hash id outside its bounds")
            check(self._bucket(self.htab[i].key) == i, "index entry not found by a lookup")
            probe = <int64_t>self._home(self.htab[i].key)
            while probe != i:
                check(self.htab[probe].slot != NIL, "index entry unreachable (hole in its run)")
                probe = (probe + 1) & <int64_t>self.hmask
            # Robin Hood order: the next entry is displaced at most one more
            probe = (i + 1) & <int64_t>self.hmask
            if self.htab[probe].slot != NIL:
                check(self._dist(probe) <= self._dist(i) + 1, "index run out of Robin Hood order")
        check(seen == self.n_hashed, "hash size")


cdef inline void check(bint ok, str what) except *:
    if not ok:
        raise AssertionError(what)


def memory_stats(Book book):
    """Bytes the kernel holds, by structure (its own accounting of malloc'd
    capacity; allocator overhead not included), and the counts."""
    cdef Py_ssize_t s, side_bytes = 0, empty = 0
    for s in range(2 * book.n_instruments):
        side_bytes += book.sides[s].cap * (sizeof(int64_t) + sizeof(int32_t))
        empty += book.sides[s].empty
    stats = {
        "orders": book.n_orders,
        "levels": book.n_levels - empty,
        "empty_levels_kept": empty,
        "order_pool_bytes": book.orders_cap * sizeof(Order),
        "level_pool_bytes": book.lvls_cap * sizeof(Level),
        "side_array_bytes": side_bytes + max(1, 2 * book.n_instruments) * sizeof(Side),
        "index_bytes": book.hcap * sizeof(Bucket) + book.win_cap * sizeof(int32_t),
        "index_window_bytes": book.win_cap * sizeof(int32_t),
        "index_window_ids": book.n_win,
        "index_window_span": book.win_len,
        "index_window_offset": book.win_off,
        "index_max_displacement": book._max_displacement(),
        "match_buffer_bytes": book.recs_cap * sizeof(Rec),
        "sizeof_order": sizeof(Order),
        "sizeof_level": sizeof(Level),
    }
    stats["total_bytes"] = (stats["order_pool_bytes"] + stats["level_pool_bytes"]
                            + stats["side_array_bytes"] + stats["index_bytes"]
                            + stats["match_buffer_bytes"])
    return stats
