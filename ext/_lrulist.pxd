# The intrusive recency list shared by ext.lru and ext.ratelimit. Header-only (STYLE.md rule 2,
# as _common.pxd): a C struct and inline functions, no module behind it.
#
# Each entry embeds an LruLink; the owner embeds one more as the sentinel `root`
# (root.next is the most recently used link, root.prev the least). The links are raw pointers
# and own nothing: the owner's key -> entry dict holds the only reference to each entry, so the
# list forms no reference cycle, needs no tear-down, and a move costs no refcount traffic.
# The owner's rule: an entry is linked exactly while its dict holds it; unlink it while a
# reference still keeps it alive, and never dereference the links of an unlinked entry.
# `link_offset` / `node_at` map a link back to its entry (container_of), so an entry carries
# no back-pointer.

from cpython.object cimport PyObject


ctypedef struct LruLink:
    LruLink* prev               # towards the most recently used end
    LruLink* next               # towards the least recently used end


cdef inline void lru_init(LruLink* root) noexcept:
    root.prev = root
    root.next = root


cdef inline void lru_push_front(LruLink* root, LruLink* link) noexcept:
    link.prev = root
    link.next = root.next
    root.next.prev = link
    root.next = link


cdef inline void lru_unlink(LruLink* link) noexcept:
    link.prev.next = link.next
    link.next.prev = link.prev
    link.prev = NULL
    link.next = NULL


cdef inline void lru_touch(LruLink* root, LruLink* link) noexcept:
    # Mark most recently used.
    if root.next != link:
        lru_unlink(link)
        lru_push_front(root, link)


cdef inline LruLink* lru_oldest(LruLink* root) noexcept:
    # The least recently used link, or NULL when the list is empty. Not unlinked: the owner
    # drops the entry from its dict first, so a key whose __eq__ raises leaves both intact.
    return NULL if root.prev == root else root.prev


cdef inline Py_ssize_t link_offset(object node, LruLink* link) noexcept:
    # Where `link` sits inside `node`, measured once per entry type on a probe instance.
    return <char*>link - <char*><PyObject*>node


cdef inline PyObject* node_at(LruLink* link, Py_ssize_t offset) noexcept:
    # The entry that embeds `link` at `offset` (borrowed; cast it to the entry type).
    return <PyObject*>(<char*>link - offset)
