/* VG_API marks the functions and data libvoxguard exports; everything else in the library is hidden. */
#ifndef VG_EXPORT_H
#define VG_EXPORT_H

#define VG_API __attribute__((visibility("default")))

#endif /* VG_EXPORT_H */
