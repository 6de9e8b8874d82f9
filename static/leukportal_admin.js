'use strict';
// The Django admin's widgets, given what assistive technology needs where axe-core found it missing
// (scripts/axe_audit.py). Loaded with defer on every admin page by templates/admin/base_site.html: it runs once the
// page is parsed and before jQuery's ready handlers, so before Django's autocomplete.js starts Select2.
{
    // Autocomplete fields (Select2, e.g. the case form's patient). Its list opens inside <main>, not at the end of
    // <body> outside every landmark; the box and the list's search field are named by the field's label (the
    // <label for> names the hidden <select>); the open box says which list it controls (ARIA 1.2 combobox).
    const autocompletes = Array.from(document.querySelectorAll('select.admin-autocomplete'));
    const main = document.querySelector('main[id]');
    const labelOf = (select) => {
        const label = select.id && document.querySelector(`label[for="${select.id}"]`);
        if (label && !label.id) {
            label.id = `${select.id}_label`;
        }
        return label;
    };
    const boxOf = (select) => select.nextElementSibling
        && select.nextElementSibling.querySelector('.select2-selection');

    autocompletes.forEach((select) => {
        if (main && !select.dataset.dropdownParent) {
            select.dataset.dropdownParent = `#${main.id}`;
        }
    });
    const $ = window.django && window.django.jQuery;
    if ($ && autocompletes.length) {
        // Queued after autocomplete.js's own ready handler, which starts Select2.
        $(() => autocompletes.forEach((select) => {
            const label = labelOf(select), box = boxOf(select);
            const rendered = box && box.querySelector('.select2-selection__rendered[id]');
            if (label && rendered) {
                box.setAttribute('aria-labelledby', `${label.id} ${rendered.id}`);  // "Patient P-1042"
                rendered.setAttribute('aria-labelledby', label.id);
            }
        }));
        $(document).on('select2:open', 'select.admin-autocomplete', function () {
            const label = labelOf(this), box = boxOf(this);
            const results = box && box.getAttribute('aria-owns');
            if (!results) {
                return;
            }
            box.setAttribute('aria-controls', results);
            const search = document.querySelector(`.select2-search__field[aria-controls="${results}"]`);
            if (search && label) {
                search.setAttribute('aria-labelledby', label.id);
            }
        });
        $(document).on('select2:close', 'select.admin-autocomplete', function () {
            const box = boxOf(this);
            if (box) {
                box.removeAttribute('aria-controls');
            }
        });
    }

    // The search icons of the two-list selectors (groups, permissions) are spans named with aria-label, which a
    // span may not have: they are images. SelectFilter2.js draws them on the window's load event; this runs after.
    window.addEventListener('load', () => setTimeout(() => {
        document.querySelectorAll('.selector .search-label-icon[aria-label]:not([role])').forEach((icon) => {
            icon.setAttribute('role', 'img');
        });
    }));
}
